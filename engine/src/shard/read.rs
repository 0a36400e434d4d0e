//! The shard's read paths: one fetch, a long poll, offset lookups by time, and the
//! subscription task that pushes batches within a subscriber's credit.

use super::*;

/// Where a read ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// At the high watermark: what is written to the file (the shard's own readers: work
    /// queues, offset lookups by time).
    Written,
    /// Where the reader's isolation ends (`PartitionCore::visible_end`): fetches, long polls
    /// and subscriptions.
    Visible(Isolation),
}

fn response(p: &Partition, r: ReadResult, offset: u64, end: u64) -> FetchResponse {
    let w = p.watermarks();
    let next_offset = r
        .chunks
        .last()
        .and_then(|c| batch::split_batches(c).ok())
        .and_then(|bs| bs.last().and_then(|b| BatchHeader::parse(b).ok()))
        .map_or(offset, |h| h.next_offset());
    // Records delivered: whole batches are returned, so the first may start before `offset`.
    let first_base = r
        .chunks
        .first()
        .and_then(|c| BatchHeader::parse(c).ok())
        .map_or(next_offset, |h| h.base_offset);
    let delivered = next_offset.saturating_sub(first_base.max(offset));
    p.fetched_records.set(p.fetched_records.get() + delivered);
    p.fetched_bytes.set(p.fetched_bytes.get() + r.bytes as u64);
    FetchResponse {
        chunks: r.chunks,
        records: r.records,
        bytes: r.bytes,
        next_offset,
        // The end this reader may read up to (its isolation's), which is what its lag means.
        high_watermark: end,
        log_start: w.log_start,
    }
}

pub(crate) async fn read_once(
    p: &Partition,
    offset: u64,
    max_bytes: usize,
    max_records: usize,
) -> Result<FetchResponse> {
    read_upto(p, offset, max_bytes, max_records, ReadEnd::Written).await
}

/// One read of whole batches from `offset` up to `end`: from the cache (batches appended and
/// not yet written included, for an `Appended` reader) or from the file.
pub(crate) async fn read_upto(
    p: &Partition,
    offset: u64,
    max_bytes: usize,
    max_records: usize,
    end: ReadEnd,
) -> Result<FetchResponse> {
    let (plan, end) = {
        let core = p.core.borrow();
        let log = core.log();
        match end {
            ReadEnd::Written => (
                log.plan_read(offset, max_bytes, max_records)?,
                log.watermarks().written_offset,
            ),
            ReadEnd::Visible(isolation) => {
                let end = core.visible_end(isolation);
                (
                    log.plan_read_upto(offset, max_bytes, max_records, end)?,
                    end,
                )
            }
        }
    };
    let r = match plan {
        ReadPlan::Ready(r) => {
            if r.records > 0 {
                p.cache_hits.set(p.cache_hits.get() + 1);
            }
            r
        }
        ReadPlan::Disk(d) => {
            p.cache_misses.set(p.cache_misses.get() + 1);
            d.run().await?
        }
    };
    Ok(response(p, r, offset, end))
}

pub(super) async fn fetch(
    p: &Partition,
    offset: u64,
    max_bytes: usize,
    max_records: usize,
    max_wait: Duration,
    isolation: Isolation,
) -> Result<FetchResponse> {
    let deadline = Instant::now() + max_wait;
    let end = ReadEnd::Visible(isolation);
    loop {
        let seen = p.notify.version();
        let r = read_upto(p, offset, max_bytes, max_records, end).await?;
        let now = Instant::now();
        if r.records > 0 || now >= deadline || p.is_closed() {
            return Ok(r);
        }
        rt::timeout(deadline - now, p.notify.changed(seen)).await;
    }
}

pub(super) async fn list_offset(p: &Partition, spec: OffsetSpec) -> Result<u64> {
    let w = p.watermarks();
    match spec {
        OffsetSpec::Earliest => Ok(w.log_start),
        OffsetSpec::Latest => Ok(w.written_offset),
        OffsetSpec::At(o) if o >= w.log_start && o <= w.written_offset => Ok(o),
        OffsetSpec::At(o) => Err(Error::OffsetOutOfRange {
            offset: o,
            log_start: w.log_start,
            log_end: w.written_offset,
        }),
        OffsetSpec::Timestamp(ts) => {
            let Some(mut offset) = p.core.borrow().log().time_lookup_start(ts) else {
                return Ok(w.written_offset);
            };
            // Bounded: each round advances by at least one batch, and stops at the watermark.
            while offset < w.written_offset {
                let r = read_once(p, offset, TIME_SEARCH_READ_BYTES, usize::MAX).await?;
                if r.records == 0 {
                    break;
                }
                if let Some(found) = log::first_at_or_after(&r.chunks, ts)? {
                    return Ok(found.max(offset));
                }
                offset = r.next_offset;
                rt::yield_if_needed().await;
            }
            Ok(w.written_offset)
        }
    }
}

/// Pushes batches to a subscriber as soon as its isolation lets it see them (appended, or
/// durable), as fast as the subscriber takes them (the bounded channel is the credit). Ends
/// when the subscriber goes away or the partition closes; an error (e.g. the offset fell below
/// the log start) is sent, then it ends.
pub(super) async fn subscription(
    p: Rc<Partition>,
    from: u64,
    max_bytes: usize,
    isolation: Isolation,
    tx: flume::Sender<Result<FetchResponse>>,
) {
    let end = ReadEnd::Visible(isolation);
    let mut cursor = from;
    loop {
        if p.is_closed() {
            let _ = tx
                .send_async(Err(Error::UnknownPartition {
                    topic: p.key.0.to_string(),
                    partition: p.key.1,
                }))
                .await;
            return;
        }
        let seen = p.notify.version();
        match read_upto(&p, cursor, max_bytes, usize::MAX, end).await {
            Err(e) => {
                let _ = tx.send_async(Err(e)).await;
                return;
            }
            Ok(r) if r.records == 0 => {
                // Idle: wait for new data, checking now and then whether anyone still listens.
                if rt::timeout(SUBSCRIPTION_IDLE_CHECK, p.notify.changed(seen))
                    .await
                    .is_none()
                    && tx.is_disconnected()
                {
                    return;
                }
            }
            Ok(r) => {
                cursor = r.next_offset;
                if tx.send_async(Ok(r)).await.is_err() {
                    return;
                }
            }
        }
    }
}
