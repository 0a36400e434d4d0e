//! Verification against the ledger: after every fault the producers are held and each
//! partition is scanned from its last verified point to the high watermark; every acknowledged
//! record must be there, once, with its exact bytes ([`super::ledger::Scan`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use shardline_engine::batch;
use shardline_net::client::Client;

use super::ledger::{self, PartitionLedger, Scan, Violation};
use super::{Config, Shared, TOPIC, groups, lock, queue};

/// How long [`retry_client`] tries to reach the server, and how often.
const CONNECT_RETRY_LIMIT: Duration = Duration::from_secs(30);
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// The most a scan asks for in its first fetch (which also reads the high watermark) and in
/// each later one.
const SCAN_FIRST_FETCH_BYTES_MAX: u32 = 1 << 20;
const SCAN_FETCH_BYTES_MAX: u32 = 4 << 20;
/// A scan that needs more fetches than this does not advance.
const SCAN_FETCHES_MAX: u64 = 10_000_000;

/// Verified points of every verified topic: per partition, the offset up to which the log was
/// checked and each producer's highest sequence below it.
pub(super) struct Verified {
    topic: Vec<(u64, HashMap<u32, u64>)>,
    queue: Vec<(u64, HashMap<u32, u64>)>,
    groups: bool,
    queue_enabled: bool,
}

impl Verified {
    pub(super) fn new(cfg: &Config) -> Verified {
        Verified {
            topic: vec![(0, HashMap::new()); cfg.partitions as usize],
            queue: vec![
                (0, HashMap::new());
                if cfg.queue_consumers > 0 {
                    cfg.queue_partitions as usize
                } else {
                    0
                }
            ],
            groups: cfg.group_members > 0,
            queue_enabled: cfg.queue_consumers > 0,
        }
    }
}

/// Holds the producers, waits for sends in flight, scans every partition of the torture topic
/// and the work queue from its verified point to the high watermark against the ledger, and
/// moves the verified point; reads the group's committed offsets and the queue's ack floors back.
/// Returns (records scanned, acknowledged records found).
pub(super) fn verify(
    shared: &Shared,
    verified: &mut Verified,
    from_zero: bool,
) -> anyhow::Result<(u64, u64)> {
    shared.hold_producers();
    let result = (|| {
        let client = retry_client(shared)?;
        let (mut records, mut acked) = (0, 0);
        let topics = [
            (TOPIC, &shared.ledger, &mut verified.topic),
            (queue::QUEUE, &shared.queue_ledger, &mut verified.queue),
        ];
        for (topic, ledgers, points) in topics {
            for (p, point) in points.iter_mut().enumerate() {
                let (from, last_seq) = if from_zero {
                    (0, HashMap::new())
                } else {
                    point.clone()
                };
                let (r, end) =
                    scan_partition(&client, topic, &ledgers[p], p as u32, from, last_seq)?;
                records += r.records;
                acked += r.acked_found;
                for v in &r.violations {
                    shared.violation(format!("{topic} {}", v.0));
                }
                *point = (end, r.last_seq);
            }
        }
        if verified.groups {
            groups::check_committed(shared, &client)?;
        }
        if verified.queue_enabled {
            queue::check_floors(shared, &client)?;
        }
        Ok((records, acked))
    })();
    shared.hold.store(false, Ordering::Release);
    result
}

/// A client on the server's bootstrap address, retrying for a bounded time while it cannot
/// be reached.
pub(super) fn retry_client(shared: &Shared) -> anyhow::Result<Client> {
    let deadline = Instant::now() + CONNECT_RETRY_LIMIT;
    loop {
        match shared.client(false) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(CONNECT_RETRY_INTERVAL),
        }
    }
}

/// Decodes a fetched chunk (consecutive whole batches; the decode checks each CRC) into
/// `(offset, value)` pairs.
pub(super) fn decode_chunk(chunk: &[u8]) -> Result<Vec<(u64, Vec<u8>)>, shardline_engine::Error> {
    let mut out = Vec::new();
    for b in batch::split_batches(chunk)? {
        let (h, records) = batch::decode(b)?;
        out.extend(
            records
                .into_iter()
                .map(|r| (h.base_offset + u64::from(r.offset_delta), r.value)),
        );
    }
    Ok(out)
}

/// Scans one partition from `from` to its high watermark.
pub(super) fn scan_partition(
    client: &Client,
    topic: &str,
    ledger: &Mutex<PartitionLedger>,
    p: u32,
    from: u64,
    last_seq: HashMap<u32, u64>,
) -> anyhow::Result<(ledger::ScanResult, u64)> {
    // Held for the whole scan: no acknowledgement lands between reading the high watermark
    // and checking the ledger.
    let ledger = lock(ledger);
    let first = client.fetch(topic, p, from, Duration::ZERO, SCAN_FIRST_FETCH_BYTES_MAX)?;
    if first.log_start != 0 {
        bail!(
            "partition {p}: log start moved to {} (no retention here)",
            first.log_start
        );
    }
    let end = first.high_watermark;
    let mut scan = Scan::new(p, &ledger, from, last_seq);
    let mut at = from;
    let mut chunks = first.chunks;
    let mut fetches = 0u64;
    while at < end {
        for chunk in &chunks {
            let records = match decode_chunk(chunk) {
                Ok(x) => x,
                Err(e) => {
                    let mut r = scan.finish(at);
                    r.violations.push(Violation(format!(
                        "partition {p}: corrupt batch served at {at}: {e}"
                    )));
                    return Ok((r, at));
                }
            };
            for (offset, value) in records {
                if offset >= at && offset < end {
                    scan.record(offset, &value);
                    at = offset + 1;
                }
            }
        }
        if at >= end {
            break;
        }
        fetches += 1;
        if fetches > SCAN_FETCHES_MAX {
            bail!("partition {p}: scan does not advance at {at}");
        }
        let r = client.fetch(topic, p, at, Duration::ZERO, SCAN_FETCH_BYTES_MAX)?;
        if r.chunks.is_empty() {
            break;
        }
        chunks = r.chunks;
    }
    Ok((scan.finish(end), end))
}
