//! The world's jobs (futures of the partition cores, polled until they wait for storage)
//! and the actions the cores ask for.

use super::{Actions, Check, Done, Task, Timer, World};
use crate::error::{Error, Result};
use crate::partition::Action;
use crate::shard::{Acks, ProduceAck};
use std::future::Future;
use std::task::{Context, Poll, Waker};

impl World {
    pub(super) fn spawn(&mut self, part: usize, fut: impl Future<Output = Done> + 'static) {
        self.tasks.push(Task {
            part,
            fut: Box::pin(fut),
        });
    }

    /// Polls every job until none can progress (all wait for a storage verdict).
    pub(super) fn poll_tasks(&mut self) -> Check {
        let mut cx = Context::from_waker(Waker::noop());
        loop {
            let mut ready = None;
            for (i, t) in self.tasks.iter_mut().enumerate() {
                if let Poll::Ready(done) = t.fut.as_mut().poll(&mut cx) {
                    ready = Some((i, done));
                    break;
                }
            }
            let Some((i, done)) = ready else {
                return Ok(());
            };
            let t = self.tasks.remove(i);
            self.on_done(t.part, done)?;
        }
    }

    pub(super) fn on_done(&mut self, p: usize, done: Done) -> Check {
        let now = self.now_ms;
        let mut out = Vec::new();
        let part = &mut self.parts[p];
        let core = part.core.as_mut().ok_or("no core")?;
        match done {
            Done::Flush(done) => {
                let report = core.flush_done(done, now, &mut out);
                if self.verbose {
                    println!(
                        "[{}] p{p} flush done synced {} {:?}",
                        self.step, report.synced, report.result
                    );
                }
                self.stats.flushes += 1;
                if report.result.is_err() {
                    self.stats.failed_flushes += 1;
                }
            }
            Done::Repair(reopened) => match core.repaired(*reopened, &mut out) {
                Ok(w) => {
                    if self.verbose {
                        println!("[{}] p{p} repaired: {w:?}", self.step);
                    }
                    self.stats.repairs += 1;
                    if w.next_offset < part.model.durable_acked_end {
                        return Err(format!(
                            "invariant 3: the repair reopened the log ending at {}, below the \
                             durable-acked end {}",
                            w.next_offset, part.model.durable_acked_end
                        ));
                    }
                    part.model.truncate(w.next_offset)?;
                }
                Err(_) => self.stats.failed_repairs += 1,
            },
            Done::Snapshot(upto, r) => core.snapshot_done(upto, &r),
            Done::Roll(_) => {
                let expired = core.take_expired(now);
                if expired.is_empty() {
                    part.retention_running = false;
                } else {
                    self.stats.expired_segments += expired.files().len() as u64;
                    self.spawn(p, async move { Done::Expired(expired.run().await) });
                }
            }
            Done::Expired(_) => part.retention_running = false,
        }
        self.perform(p, out)?;
        self.check_watermarks(p)
    }

    /// Does what the core asked for, in order.
    pub(super) fn perform(&mut self, p: usize, out: Actions) -> Check {
        for a in out {
            match a {
                Action::Reply {
                    token,
                    result,
                    durable,
                } => self.on_reply(p, token, result, durable)?,
                Action::WakeReaders => {}
                Action::StartFlush(f) => {
                    self.note(|| format!("p{p} start flush syncs {}", f.job.syncs()));
                    self.spawn(p, async move { Done::Flush(f.job.run().await) });
                }
                Action::ArmSyncTimer { deadline_ms } => {
                    self.timers.push(Timer {
                        deadline_ms,
                        part: p,
                    });
                }
                Action::StartRepair(job) => {
                    let now = self.now_ms;
                    self.spawn(p, async move { Done::Repair(Box::new(job.run(now).await)) });
                }
                Action::WriteSnapshot(job) => {
                    let upto = job.upto_offset();
                    self.spawn(p, async move { Done::Snapshot(upto, job.run().await) });
                }
            }
        }
        Ok(())
    }

    /// A producer's answer: the offsets it must carry (invariant 5), the ack order (2), and a
    /// durable one is queued for the durability probe (1).
    pub(super) fn on_reply(
        &mut self,
        p: usize,
        token: u64,
        result: Result<ProduceAck>,
        durable: bool,
    ) -> Check {
        let Some(req) = self.requests.remove(&token) else {
            return Err(format!("reply to request {token}, which is not waiting"));
        };
        if req.part != p {
            return Err(format!(
                "request {token} of partition {} answered by {p}",
                req.part
            ));
        }
        let ack = match result {
            Ok(ack) => ack,
            Err(e) => {
                self.stats.errors += 1;
                self.mix(error_code(&e));
                return Ok(());
            }
        };
        self.mix(ack.last_offset ^ (u64::from(durable) << 63));
        self.note(|| format!("p{p} reply {token} {ack:?} durable {durable}"));
        if req.expect != Some(ack) {
            return Err(format!(
                "invariant 5: request {token} answered with {ack:?}, expected {:?}",
                req.expect
            ));
        }
        if durable && req.acks != Acks::Durable {
            return Err(format!("a {:?} producer waited for a sync", req.acks));
        }
        if req.acks != Acks::Durable {
            return Ok(());
        }
        let part = &mut self.parts[p];
        if durable {
            if part.last_durable_reply.is_some_and(|l| l > ack.last_offset) {
                return Err(format!(
                    "invariant 2: durable ack of {ack:?} after one ending at {:?}",
                    part.last_durable_reply
                ));
            }
            part.last_durable_reply = Some(ack.last_offset);
        }
        part.model.durable_acked_end = part.model.durable_acked_end.max(ack.last_offset + 1);
        part.unprobed.push(ack);
        self.stats.durable_acks += 1;
        Ok(())
    }
}

/// A stable number for an error (the trace must not depend on message text with addresses).
fn error_code(e: &Error) -> u64 {
    match e {
        Error::DiskFull { .. } => 1,
        Error::PartitionFailed { .. } => 2,
        Error::OutOfOrderSequence { .. } => 3,
        Error::DuplicateSequence { .. } => 4,
        _ => 5,
    }
}
