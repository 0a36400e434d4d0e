//! One consumer thread: receives its partitions' messages, measures end-to-end latency from
//! each message's header, and checks every partition for gaps, duplicates and reordering.
//!
//! It runs until told to stop: after the producers finish, the runner sends
//! [`Control::Drain`] with how many messages each partition acknowledged; the consumer exits as
//! soon as it has them all (and says so on `done`), or when [`Control::Stop`] arrives at the
//! drain deadline.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use hdrhistogram::Histogram;

use crate::clock;
use crate::driver::{Consumer, Received};
use crate::exec;
use crate::payload;
use crate::progress::{IntervalRecorder, Progress};
use crate::runner::RunTimes;
use crate::scheduler;
use crate::stats::{self, PerSecond};

/// Messages from the runner.
#[derive(Debug, Clone)]
pub enum Control {
    /// The producers are done: `(partition, acknowledged messages)` for each of this
    /// consumer's partitions. Exit once each has been received.
    Drain { targets: Vec<(u32, u64)> },
    /// Exit now.
    Stop,
}

/// Integrity of one partition's stream, from offsets (broker side) and sequence numbers
/// (producer side).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionCheck {
    /// Unique messages received (duplicates excluded).
    pub received: u64,
    /// Messages delivered again at an offset already seen.
    pub duplicates: u64,
    /// Offsets skipped (messages missing between two received ones).
    pub gaps: u64,
    /// Messages whose sequence number was not the next one expected.
    pub out_of_order: u64,
    /// Values too short to hold the loadgen header.
    pub malformed: u64,
    next_offset: Option<u64>,
    next_sequence: u64,
}

impl PartitionCheck {
    /// Checks one message. Returns false if it is a duplicate (not to be measured again).
    pub fn observe(&mut self, offset: Option<u64>, sequence: Option<u64>) -> bool {
        if let Some(o) = offset {
            match self.next_offset {
                Some(next) if o < next => {
                    self.duplicates += 1;
                    return false;
                }
                Some(next) if o > next => self.gaps += o - next,
                _ => {}
            }
            self.next_offset = Some(o + 1);
        }
        self.received += 1;
        match sequence {
            Some(s) if s == self.next_sequence => self.next_sequence += 1,
            Some(s) => {
                self.out_of_order += 1;
                self.next_sequence = s + 1;
            }
            None => self.malformed += 1,
        }
        true
    }

    pub fn problems(&self) -> u64 {
        self.duplicates + self.gaps + self.out_of_order + self.malformed
    }
}

/// What one consumer thread is asked to do.
pub struct ConsumerPlan {
    pub index: usize,
    pub partitions: Vec<u32>,
    pub partition_count: u32,
    pub times: RunTimes,
    pub core: Option<core_affinity::CoreId>,
    pub progress: Option<Arc<Progress>>,
    pub control: flume::Receiver<Control>,
    /// Receives `index` once every drain target is met.
    pub done: flume::Sender<usize>,
}

/// What one consumer thread measured.
pub struct ConsumerReport {
    /// Receive time minus header send time, for messages sent in the measurement window.
    pub e2e: Histogram<u64>,
    pub received: u64,
    pub received_in_window: u64,
    /// Per partition (index = partition); only this consumer's partitions are non-default.
    pub checks: Vec<PartitionCheck>,
    pub received_per_second: PerSecond,
    /// Failed deliveries (not counting corruption).
    pub errors: u64,
    /// Deliveries that failed an integrity check (CRC, layout).
    pub corrupt: u64,
    pub first_error: Option<String>,
    pub pinned: bool,
}

/// Deliveries handled before looking at control messages again (keeps Stop responsive).
const DELIVERIES_PER_ROUND: usize = 64;

/// Runs one consumer until drained or stopped (blocking the calling thread).
pub fn run_consumer(plan: ConsumerPlan, mut consumer: Box<dyn Consumer>) -> ConsumerReport {
    let pinned = exec::pin_current(plan.core);
    let t = plan.times;
    let mut report = ConsumerReport {
        e2e: stats::new_histogram(),
        received: 0,
        received_in_window: 0,
        checks: vec![PartitionCheck::default(); plan.partition_count as usize],
        received_per_second: PerSecond::new(t.seconds_max()),
        errors: 0,
        corrupt: 0,
        first_error: None,
        pinned,
    };
    let mut interval = IntervalRecorder::new(plan.progress.clone(), true);
    let waker = exec::current_thread_waker();
    let mut cx = Context::from_waker(&waker);
    let mut control = pin!(plan.control.recv_async());
    let mut targets: Option<Vec<(u32, u64)>> = None;
    'run: loop {
        // Poll control until Pending: a fresh receive future must be polled once to register
        // our waker, or the next message (Stop) would never wake this thread.
        loop {
            match control.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(Control::Drain { targets: t })) => {
                    targets = Some(t);
                    control.set(plan.control.recv_async());
                }
                Poll::Ready(Ok(Control::Stop) | Err(_)) => break 'run,
                Poll::Pending => break,
            }
        }
        if let Some(ts) = &targets
            && ts.iter().all(|&(p, n)| {
                report
                    .checks
                    .get(p as usize)
                    .is_some_and(|c| c.received >= n)
            })
        {
            let _ = plan.done.send(plan.index);
            break 'run;
        }
        let mut progressed = false;
        for _ in 0..DELIVERIES_PER_ROUND {
            let now = clock::now_us();
            let before = report.received;
            let polled = consumer.poll_deliver(&mut cx, &mut |m: Received<'_>| {
                on_message(&mut report, &mut interval, &t, now, m);
            });
            let n = report.received - before;
            if n > 0 {
                report
                    .received_per_second
                    .add(now.saturating_sub(t.start_us), n);
                if (t.warmup_end_us..t.end_us).contains(&now) {
                    report.received_in_window += n;
                }
                if let Some(p) = &plan.progress {
                    p.received.fetch_add(n, Ordering::Relaxed);
                }
            }
            match polled {
                Poll::Pending => break,
                Poll::Ready(Ok(_)) => progressed = true,
                Poll::Ready(Err(e)) => {
                    progressed = true;
                    if e.is_corruption() {
                        report.corrupt += 1;
                    } else {
                        report.errors += 1;
                    }
                    report.first_error.get_or_insert_with(|| e.to_string());
                    if let Some(p) = &plan.progress {
                        p.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        interval.maybe_flush(clock::now_us(), false);
        if !progressed {
            // Every future has our waker: a delivery or a control message unparks us.
            std::thread::park();
        }
    }
    interval.maybe_flush(clock::now_us(), true);
    report
}

fn on_message(
    report: &mut ConsumerReport,
    interval: &mut IntervalRecorder,
    t: &RunTimes,
    now: u64,
    m: Received<'_>,
) {
    let header = payload::read_header(m.value);
    let Some(check) = report.checks.get_mut(m.partition as usize) else {
        report.errors += 1;
        return;
    };
    if !check.observe(m.offset, header.map(|h| h.sequence)) {
        return;
    }
    report.received += 1;
    if let Some(h) = header
        && (t.warmup_end_us..t.end_us).contains(&h.send_us)
    {
        let e2e = now.saturating_sub(h.send_us);
        scheduler::record(&mut report.e2e, e2e, 1);
        interval.record(e2e, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::DriverError;

    /// A consumer that never receives anything.
    struct Idle;

    impl Consumer for Idle {
        fn poll_deliver(
            &mut self,
            _cx: &mut Context<'_>,
            _on_message: &mut dyn FnMut(Received<'_>),
        ) -> Poll<Result<usize, DriverError>> {
            Poll::Pending
        }
    }

    /// Regression: after a Drain message the consumer replaced its control future without
    /// polling it, parked, and a later Stop never woke it (the run hung in join forever).
    #[test]
    fn stop_after_drain_ends_a_consumer_that_is_still_waiting() {
        let (ctl_tx, ctl_rx) = flume::bounded(2);
        let (done_tx, _done_rx) = flume::bounded(1);
        let w = crate::workload::Workload::default();
        let plan = ConsumerPlan {
            index: 0,
            partitions: vec![0],
            partition_count: 1,
            times: RunTimes::new(clock::now_us(), &w),
            core: None,
            progress: None,
            control: ctl_rx,
            done: done_tx,
        };
        ctl_tx
            .send(Control::Drain {
                targets: vec![(0, 1)],
            })
            .unwrap();
        let (finished_tx, finished_rx) = flume::bounded(1);
        let h = std::thread::spawn(move || {
            let r = run_consumer(plan, Box::new(Idle));
            let _ = finished_tx.send(r.received);
        });
        ctl_tx.send(Control::Stop).unwrap();
        let got = finished_rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(got.ok(), Some(0), "the consumer did not stop");
        h.join().unwrap();
    }

    #[test]
    fn contiguous_stream_has_no_problems() {
        let mut c = PartitionCheck::default();
        for i in 0..100 {
            assert!(c.observe(Some(i), Some(i)));
        }
        assert_eq!(c.received, 100);
        assert_eq!(c.problems(), 0);
    }

    #[test]
    fn duplicates_gaps_and_reordering_are_counted() {
        let mut c = PartitionCheck::default();
        assert!(c.observe(Some(0), Some(0)));
        assert!(c.observe(Some(1), Some(1)));
        assert!(!c.observe(Some(1), Some(1)), "redelivered offset 1");
        assert!(c.observe(Some(5), Some(5)), "offsets 2..=4 missing");
        assert!(c.observe(Some(6), Some(9)), "sequence jumped");
        assert!(c.observe(Some(7), Some(10)));
        assert!(c.observe(None, None), "no offset, no header");
        assert_eq!(
            (
                c.received,
                c.duplicates,
                c.gaps,
                c.out_of_order,
                c.malformed
            ),
            (6, 1, 3, 2, 1)
        );
    }
}
