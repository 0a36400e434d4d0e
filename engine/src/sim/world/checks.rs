//! The world's invariant checks (watermarks, durable acks, reads against the model) and the
//! reads they run.

use super::{Check, World};
use crate::batch::split_batches;
use crate::log::{PartitionLog, ReadPlan, ReadResult};
use crate::sim::model::Model;
use crate::storage::Storage;
use futures_lite::future::{block_on, poll_once};
use std::future::Future;

impl World {
    /// Invariant 7 (the high watermark never moves back in a process) and the model's end.
    pub(super) fn check_watermarks(&mut self, p: usize) -> Check {
        let part = &mut self.parts[p];
        let Some(core) = part.core.as_ref() else {
            return Ok(());
        };
        let w = core.watermarks();
        if w.written_offset < part.last_hw {
            return Err(format!(
                "invariant 7: partition {p}'s high watermark moved back from {} to {}",
                part.last_hw, w.written_offset
            ));
        }
        part.last_hw = w.written_offset;
        if w.next_offset != part.model.next_offset {
            return Err(format!(
                "partition {p}'s log ends at {}, the model at {}",
                w.next_offset, part.model.next_offset
            ));
        }
        Ok(())
    }

    /// Invariant 1: every durable ack is in the durable image (what a power loss now keeps,
    /// from the storage's own account of completed syncs), with its bytes.
    pub(super) fn probe(&mut self) -> Check {
        for p in 0..self.parts.len() {
            if self.parts[p].unprobed.is_empty() {
                continue;
            }
            let part = &mut self.parts[p];
            let acks = std::mem::take(&mut part.unprobed);
            let image = self
                .storage
                .durable_image(&part.dir)
                .map_err(|e| e.to_string())?;
            let log = open_now(PartitionLog::open(
                image,
                &part.dir,
                part.log_config.clone(),
                self.now_ms,
            ))?
            .map_err(|e| format!("the durable image does not open: {e}"))?;
            self.stats.probes += 1;
            for ack in acks {
                check_readable(&log, &part.model, ack.base_offset, ack.last_offset).map_err(
                    |e| {
                        format!(
                            "invariant 1: {ack:?} was acknowledged durable, but {e} (durable \
                             image: {})",
                            self.storage.describe(&part.dir)
                        )
                    },
                )?;
            }
        }
        Ok(())
    }
}

/// Runs a future that must complete at once (recovery on a passthrough or plain crash image).
pub(super) fn open_now<F: Future>(f: F) -> Check<F::Output> {
    block_on(poll_once(f)).ok_or_else(|| "an operation did not complete at once".to_string())
}

/// One fetch, run to completion (reads are not gated).
pub(super) fn read_once<S: Storage>(
    log: &PartitionLog<S>,
    offset: u64,
    max_bytes: usize,
    max_records: usize,
) -> Check<ReadResult> {
    match log.plan_read(offset, max_bytes, max_records) {
        Ok(ReadPlan::Ready(r)) => Ok(r),
        Ok(ReadPlan::Disk(d)) => open_now(d.run())?.map_err(|e| format!("read at {offset}: {e}")),
        Err(e) => Err(format!("read at {offset}: {e}")),
    }
}

/// Invariant 6 (a read starts with the batch holding `offset` and continues densely, below the
/// high watermark) and every batch is the one appended at its offset. Returns where the read
/// ended.
pub(super) fn verify_read(model: &Model, offset: u64, r: &ReadResult, hw: u64) -> Check<u64> {
    let mut expect: Option<u64> = None;
    for chunk in &r.chunks {
        for b in split_batches(chunk).map_err(|e| format!("read at {offset}: {e}"))? {
            let h = model.check_batch(b)?;
            match expect {
                None if h.base_offset > offset || h.next_offset() <= offset => {
                    return Err(format!(
                        "invariant 6: a read at {offset} began with the batch at {}",
                        h.base_offset
                    ));
                }
                Some(e) if h.base_offset != e => {
                    return Err(format!(
                        "invariant 6: a read at {offset} jumped from {e} to {}",
                        h.base_offset
                    ));
                }
                _ => {}
            }
            if h.next_offset() > hw {
                return Err(format!(
                    "a read served the batch at {}, above the high watermark {hw}",
                    h.base_offset
                ));
            }
            expect = Some(h.next_offset());
        }
    }
    match expect {
        None if offset < hw => Err(format!("a read at {offset} below {hw} returned nothing")),
        e => Ok(e.unwrap_or(offset)),
    }
}

/// Reads `[base, last]` from `log`, checking every batch.
pub(super) fn check_readable<S: Storage>(
    log: &PartitionLog<S>,
    model: &Model,
    base: u64,
    last: u64,
) -> Check {
    let w = log.watermarks();
    if last < w.log_start {
        return Ok(()); // removed by retention since
    }
    if w.written_offset <= last {
        return Err(format!(
            "a power loss now keeps the log only up to {}",
            w.written_offset
        ));
    }
    let mut at = base.max(w.log_start);
    while at <= last {
        let r = read_once(log, at, 64 << 10, 1000)?;
        at = verify_read(model, at, &r, w.written_offset)?;
    }
    Ok(())
}

/// Reads the whole log, checking density and every batch's bytes.
pub(super) fn check_whole_log<S: Storage>(log: &PartitionLog<S>, model: &Model) -> Check {
    let w = log.watermarks();
    let mut at = w.log_start;
    while at < w.written_offset {
        let r = read_once(log, at, 256 << 10, 10_000)?;
        at = verify_read(model, at, &r, w.written_offset)?;
    }
    Ok(())
}
