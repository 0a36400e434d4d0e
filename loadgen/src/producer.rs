//! One producer thread: paces sends (open or closed loop), keeps at most `inflight` batches
//! outstanding, and records publish latency, publish delay and per-second acks.
//!
//! Phases, on the shared [`clock`](crate::clock):
//! ```text
//!  start ........ warmup_end ............. end .................. end + drain_timeout
//!  | warm-up: sent,  | measured: latency    | open loop: overdue    | in-flight acks
//!  | not measured    | and throughput       | batches still go out  | still awaited
//! ```
//! A batch belongs to the measurement if its intended send time is in `[warmup_end, end)`.
//! Open-loop batches still unsent at the drain deadline count as `unsent` and are recorded with
//! latency `deadline - intended`, a lower bound, so an overloaded run cannot hide its backlog.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use hdrhistogram::Histogram;

use crate::clock;
use crate::driver::{AckFuture, DriverError, Producer};
use crate::exec;
use crate::payload::{self, MessageHeader};
use crate::progress::{IntervalRecorder, Progress};
use crate::runner::RunTimes;
use crate::scheduler::{self, OpenLoop, Pacing};
use crate::stats::{self, PerSecond};

/// What one producer thread is asked to do.
pub struct ProducerPlan {
    pub index: usize,
    pub partitions: Vec<u32>,
    /// Total partitions of the topic (sizes the per-partition tables).
    pub partition_count: u32,
    pub message_bytes: usize,
    pub batch_messages: u32,
    pub inflight_max: usize,
    pub pacing: Pacing,
    pub times: RunTimes,
    pub core: Option<core_affinity::CoreId>,
    pub progress: Option<Arc<Progress>>,
}

/// What one producer thread measured.
pub struct ProducerReport {
    /// Ack time minus intended send time, measured batches only (one sample per message).
    pub publish: Histogram<u64>,
    /// Actual minus intended send time, measured batches only.
    pub delay: Histogram<u64>,
    /// Ack time minus the actual send time of the already built batch, measured batches only: what
    /// other tools call publish latency (it leaves out the time a batch waited to be sent).
    pub send_to_ack: Histogram<u64>,
    /// Closed loop only: `publish` corrected with `record_correct` (see [`scheduler`]).
    pub publish_corrected: Option<Histogram<u64>>,
    pub sent: u64,
    pub acked: u64,
    /// Messages whose batch failed or whose ack never came.
    pub errors: u64,
    /// Open loop: messages due before the end that could not be sent before the deadline.
    pub unsent: u64,
    /// Messages acknowledged within the measurement window.
    pub acked_in_window: u64,
    /// Acknowledged messages per partition (index = partition).
    pub acked_by_partition: Vec<u64>,
    pub acked_per_second: PerSecond,
    pub errors_per_second: PerSecond,
    pub first_error: Option<String>,
    pub pinned: bool,
}

struct InFlight {
    fut: AckFuture,
    partition: u32,
    messages: u64,
    intended_us: u64,
    /// When `Producer::send` was called with the built batch.
    sent_us: u64,
}

struct State<'a> {
    plan: &'a ProducerPlan,
    report: ProducerReport,
    warmup: Histogram<u64>,
    /// Closed loop: the expected interval, calibrated from the warm-up median once it is over.
    correction_interval_us: Option<u64>,
    interval: IntervalRecorder,
}

impl State<'_> {
    fn complete(&mut self, f: &InFlight, result: Result<u64, DriverError>, now: u64) {
        let t = &self.plan.times;
        let since_start = now.saturating_sub(t.start_us);
        match result {
            Ok(n) => {
                self.report.acked += n;
                if let Some(c) = self.report.acked_by_partition.get_mut(f.partition as usize) {
                    *c += n;
                }
                self.report.acked_per_second.add(since_start, n);
                if (t.warmup_end_us..t.end_us).contains(&now) {
                    self.report.acked_in_window += n;
                }
                let latency = now.saturating_sub(f.intended_us);
                if f.intended_us < t.warmup_end_us {
                    scheduler::record(&mut self.warmup, latency, n);
                } else {
                    scheduler::record(&mut self.report.publish, latency, n);
                    let send_to_ack = now.saturating_sub(f.sent_us);
                    scheduler::record(&mut self.report.send_to_ack, send_to_ack, n);
                    self.interval.record(latency, n);
                    self.record_corrected(latency, n);
                }
                if let Some(p) = &self.plan.progress {
                    p.acked.fetch_add(n, Ordering::Relaxed);
                }
            }
            Err(e) => {
                self.fail(f.messages, e.to_string(), since_start);
            }
        }
    }

    fn record_corrected(&mut self, latency: u64, n: u64) {
        let Some(h) = self.report.publish_corrected.as_mut() else {
            return;
        };
        if self.correction_interval_us.is_none() && !self.warmup.is_empty() {
            self.correction_interval_us = Some(self.warmup.value_at_quantile(0.5).max(1));
        }
        match self.correction_interval_us {
            Some(i) => scheduler::record_closed_loop_corrected(h, latency, n, i),
            None => scheduler::record(h, latency, n),
        }
    }

    fn fail(&mut self, messages: u64, error: String, since_start_us: u64) {
        self.report.errors += messages;
        self.report.errors_per_second.add(since_start_us, messages);
        self.report.first_error.get_or_insert(error);
        if let Some(p) = &self.plan.progress {
            p.errors.fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// Polls every outstanding ack; retires the finished ones in place.
    fn poll_inflight(&mut self, inflight: &mut Vec<InFlight>, cx: &mut Context<'_>) {
        let mut i = 0;
        while i < inflight.len() {
            if let Poll::Ready(r) = Pin::new(&mut inflight[i].fut).poll(cx) {
                let f = inflight.swap_remove(i);
                self.complete(&f, r, clock::now_us());
            } else {
                i += 1;
            }
        }
    }
}

/// A batch about to be sent: where, when it was meant to go, what it holds.
struct Outgoing {
    partition: u32,
    intended_us: u64,
    values: Vec<Vec<u8>>,
}

impl<'a> State<'a> {
    fn new(plan: &'a ProducerPlan, pinned: bool) -> State<'a> {
        let seconds = plan.times.seconds_max();
        let closed_loop = matches!(plan.pacing, Pacing::ClosedLoop);
        State {
            plan,
            report: ProducerReport {
                publish: stats::new_histogram(),
                delay: stats::new_histogram(),
                send_to_ack: stats::new_histogram(),
                publish_corrected: closed_loop.then(stats::new_histogram),
                sent: 0,
                acked: 0,
                errors: 0,
                unsent: 0,
                acked_in_window: 0,
                acked_by_partition: vec![0; plan.partition_count as usize],
                acked_per_second: PerSecond::new(seconds),
                errors_per_second: PerSecond::new(seconds),
                first_error: None,
                pinned,
            },
            warmup: stats::new_histogram(),
            correction_interval_us: None,
            interval: IntervalRecorder::new(plan.progress.clone(), false),
        }
    }

    /// Sends `batch` and polls it once, which submits it in order (see the driver's contract);
    /// an ack not ready at once joins `inflight`.
    fn send(
        &mut self,
        producer: &mut dyn Producer,
        batch: Outgoing,
        inflight: &mut Vec<InFlight>,
        cx: &mut Context<'_>,
    ) {
        let t = &self.plan.times;
        let messages = batch.values.len() as u64;
        let sent_at = clock::now_us();
        if batch.intended_us >= t.warmup_end_us {
            let delay = sent_at.saturating_sub(batch.intended_us);
            scheduler::record(&mut self.report.delay, delay, messages);
        }
        let mut f = InFlight {
            fut: producer.send(batch.partition, batch.values),
            partition: batch.partition,
            messages,
            intended_us: batch.intended_us,
            sent_us: sent_at,
        };
        self.report.sent += messages;
        match f.fut.as_mut().poll(cx) {
            Poll::Ready(r) => self.complete(&f, r, clock::now_us()),
            Poll::Pending => inflight.push(f),
        }
    }

    /// Open loop: whatever was due and never sent is a lower-bounded latency, not an omission.
    fn record_unsent(&mut self, schedule: &OpenLoop) {
        let t = &self.plan.times;
        let batch = schedule.batch_messages();
        let gave_up = clock::now_us();
        for intended in schedule.unsent_before(t.end_us) {
            self.report.unsent += batch;
            if intended >= t.warmup_end_us {
                let latency = gave_up.saturating_sub(intended);
                scheduler::record(&mut self.report.publish, latency, batch);
            }
        }
    }

    /// Waits for outstanding acks until the drain deadline; those that never came are errors.
    fn drain(&mut self, mut inflight: Vec<InFlight>, cx: &mut Context<'_>) {
        let t = self.plan.times;
        let deadline = t.drain_deadline_us();
        while !inflight.is_empty() {
            self.poll_inflight(&mut inflight, cx);
            if inflight.is_empty() || clock::now_us() >= deadline {
                break;
            }
            exec::park_until(deadline);
        }
        let now = clock::now_us();
        for f in inflight.drain(..) {
            let msg = format!(
                "no ack within the {:.0} s drain timeout",
                t.drain_timeout_us as f64 / 1e6
            );
            self.fail(f.messages, msg, now.saturating_sub(t.start_us));
        }
        self.interval.maybe_flush(now, true);
    }
}

/// The next batch's values: `batch_messages` copies of `template`, each stamped with the
/// intended send time and the partition's next sequence number.
fn stamp_batch(
    template: &[u8],
    batch_messages: u32,
    intended_us: u64,
    seq: &mut u64,
) -> Vec<Vec<u8>> {
    (0..batch_messages)
        .map(|_| {
            let header = MessageHeader {
                send_us: intended_us,
                sequence: *seq,
            };
            *seq += 1;
            payload::stamp(template, header)
        })
        .collect()
}

/// Runs one producer to completion (blocking the calling thread).
pub fn run_producer(plan: ProducerPlan, mut producer: Box<dyn Producer>) -> ProducerReport {
    let pinned = exec::pin_current(plan.core);
    let t = plan.times;
    let mut state = State::new(&plan, pinned);
    assert!(!plan.partitions.is_empty(), "a producer without partitions");
    let mut pacing = plan.pacing.clone();
    let template = payload::template(plan.message_bytes);
    let mut sequence = vec![0u64; plan.partition_count as usize];
    let mut next_partition = 0;
    let mut inflight: Vec<InFlight> = Vec::with_capacity(plan.inflight_max);
    let waker = exec::current_thread_waker();
    let mut cx = Context::from_waker(&waker);
    let deadline = t.drain_deadline_us();
    // Every thread starts at the same moment (the open-loop schedule counts from it).
    while clock::now_us() < t.start_us {
        exec::park_until(t.start_us);
    }

    // Send phase (for the open loop, including overdue batches after the end).
    loop {
        state.poll_inflight(&mut inflight, &mut cx);
        let now = clock::now_us();
        state.interval.maybe_flush(now, false);
        let full = inflight.len() >= plan.inflight_max;
        let (due, wake_at) = match &mut pacing {
            Pacing::ClosedLoop => {
                if now >= t.end_us {
                    break;
                }
                ((!full).then_some(now), t.end_us)
            }
            Pacing::OpenLoop(s) => {
                if s.next_due_us() >= t.end_us || now >= deadline {
                    break;
                }
                if full {
                    (None, deadline)
                } else {
                    (s.take_due(now), s.next_due_us().min(deadline))
                }
            }
        };
        match due {
            Some(intended_us) => {
                let partition = plan.partitions[next_partition];
                next_partition = (next_partition + 1) % plan.partitions.len();
                let seq = &mut sequence[partition as usize];
                let values = stamp_batch(&template, plan.batch_messages, intended_us, seq);
                let batch = Outgoing {
                    partition,
                    intended_us,
                    values,
                };
                state.send(producer.as_mut(), batch, &mut inflight, &mut cx);
            }
            // Window full or nothing due: wait for an ack, the next due time, or the end.
            None => exec::park_until(wake_at),
        }
    }
    if let Pacing::OpenLoop(s) = &pacing {
        state.record_unsent(s);
    }
    state.drain(inflight, &mut cx);
    if state.correction_interval_us.is_none() {
        // No warm-up samples to calibrate against: a "corrected" histogram would be the raw one.
        state.report.publish_corrected = None;
    }
    state.report
}
