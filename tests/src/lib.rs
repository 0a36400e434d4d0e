//! Shared helpers of Shardline's integration and fault tests.

/// The value of record `i` of the batch with sequence number `seq`, as the crash writer
/// produces it: recognisable, and of a length that varies with the sequence.
pub fn crash_value(seq: u64, i: usize) -> Vec<u8> {
    let mut v = format!("seq={seq} rec={i} ").into_bytes();
    let filler = ((seq * 7919 + i as u64 * 104_729) % 1500) as usize;
    v.extend(std::iter::repeat_n(b'a' + (seq % 26) as u8, filler));
    v
}

/// Records per batch of the crash writer, varying with the sequence.
pub fn crash_batch_len(seq: u64) -> usize {
    1 + (seq % 17) as usize
}

pub mod torture;

pub mod proxy;

pub mod cluster;
pub mod cluster_faults;
pub mod cluster_torture;
pub mod ledger;
pub mod mesh;
pub mod tmpfs;
