//! When to send, and how to measure latency without coordinated omission.
//!
//! **Open loop** (`--rate`): batch `k` of producer `i` (of `n`) is due at
//! `start + (k*n + i) * batch / rate` seconds: the producers' schedules interleave into one evenly
//! spaced sequence of exactly `rate` messages per second. A producer that falls behind (a stall,
//! a full in-flight window) sends the overdue batches as soon as it can, and latency is measured
//! from each batch's *intended* time, so a stall shows up in every sample it delayed, not only in
//! the one request that was stuck (Gil Tene's "coordinated omission"). The gap between intended
//! and actual send time is reported separately as *publish delay*.
//!
//! **Closed loop** (no `--rate`): send whenever the in-flight window has room; the latency of a
//! request is its service time. Such a loop cannot see the requests it did not send while stuck,
//! so the runner also records a corrected histogram with HdrHistogram's `record_correct`, using
//! the median latency of the warm-up as the expected interval between a window slot's requests.
//!
//! Everything here is pure: time is passed in, never read.

use hdrhistogram::Histogram;

/// How a producer paces its sends.
#[derive(Debug, Clone)]
pub enum Pacing {
    /// As fast as the in-flight window allows.
    ClosedLoop,
    /// At fixed intended times.
    OpenLoop(OpenLoop),
}

/// One producer's share of a fixed-rate schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenLoop {
    start_us: u64,
    rate_msgs_per_s: u64,
    batch_messages: u64,
    producer_count: u64,
    producer_index: u64,
    /// Index of the next batch to send.
    next_batch: u64,
}

impl OpenLoop {
    /// The schedule of producer `producer_index` of `producer_count` sharing `rate_msgs_per_s`,
    /// in batches of `batch_messages`, starting at `start_us`.
    pub fn new(
        start_us: u64,
        rate_msgs_per_s: u64,
        batch_messages: u64,
        producer_count: u64,
        producer_index: u64,
    ) -> Self {
        assert!(rate_msgs_per_s > 0, "open loop needs a positive rate");
        assert!(batch_messages > 0, "batches hold at least one message");
        assert!(
            producer_index < producer_count,
            "producer index out of range"
        );
        OpenLoop {
            start_us,
            rate_msgs_per_s,
            batch_messages,
            producer_count,
            producer_index,
            next_batch: 0,
        }
    }

    /// Intended send time of this producer's batch `k`. Computed from `k` directly (not by
    /// adding intervals), so rounding never accumulates into drift.
    pub fn intended_us(&self, k: u64) -> u64 {
        let global =
            u128::from(k) * u128::from(self.producer_count) + u128::from(self.producer_index);
        let offset =
            global * u128::from(self.batch_messages) * 1_000_000 / u128::from(self.rate_msgs_per_s);
        self.start_us
            .saturating_add(u64::try_from(offset).unwrap_or(u64::MAX))
    }

    /// Intended time of the next unsent batch.
    pub fn next_due_us(&self) -> u64 {
        self.intended_us(self.next_batch)
    }

    /// If the next batch is due at `now_us`, consumes it and returns its intended time. Overdue
    /// batches keep their own intended times: a producer that was stalled catches up with
    /// back-to-back sends whose latency still counts from when they should have gone.
    pub fn take_due(&mut self, now_us: u64) -> Option<u64> {
        let due = self.next_due_us();
        if due <= now_us {
            self.next_batch += 1;
            Some(due)
        } else {
            None
        }
    }

    /// Intended times of the batches not yet sent that were due before `end_us`.
    pub fn unsent_before(&self, end_us: u64) -> impl Iterator<Item = u64> + '_ {
        (self.next_batch..)
            .map(|k| self.intended_us(k))
            .take_while(move |t| *t < end_us)
    }

    pub fn batch_messages(&self) -> u64 {
        self.batch_messages
    }
}

/// Records `count` samples of `value_us`, clamped to the histogram's range.
pub fn record(hist: &mut Histogram<u64>, value_us: u64, count: u64) {
    hist.saturating_record_n(value_us.min(hist.high()), count);
}

/// Most synthetic samples one corrected recording may add: `record_correct` loops once per
/// interval, so a huge value with a tiny interval would otherwise stall the recording thread.
pub const CORRECTION_SAMPLES_MAX: u64 = 100_000;

/// Closed-loop recording corrected for coordinated omission: besides the sample itself,
/// back-fills the samples a window slot would have produced every `expected_interval_us` while
/// this request was outstanding (`value - interval, value - 2*interval, ...`). The interval is
/// widened if needed so that at most [`CORRECTION_SAMPLES_MAX`] samples are added.
pub fn record_closed_loop_corrected(
    hist: &mut Histogram<u64>,
    value_us: u64,
    count: u64,
    expected_interval_us: u64,
) {
    let value = value_us.min(hist.high());
    let interval = expected_interval_us
        .max(1)
        .max(value / CORRECTION_SAMPLES_MAX);
    if hist.record_n_correct(value, count, interval).is_err() {
        // Unreachable with the clamp above; fall back to the uncorrected sample.
        record(hist, value, count);
    }
}

#[cfg(test)]
mod tests {
    //! Proves the schedule has no drift and interleaves producers, and that a simulated server
    //! stall shows up in open-loop and `record_correct`ed percentiles while a naive closed-loop
    //! measurement hides it.

    use super::*;
    use std::collections::VecDeque;

    fn hist() -> Histogram<u64> {
        crate::stats::new_histogram()
    }

    #[test]
    fn schedule_has_the_exact_rate_and_no_drift() {
        let s = OpenLoop::new(1_000, 3_000, 1, 1, 0);
        // 3000 msgs/s: 333.33 us apart; after exactly 3 million batches, exactly 1000 s.
        assert_eq!(s.intended_us(0), 1_000);
        assert_eq!(s.intended_us(1), 1_333);
        assert_eq!(s.intended_us(3), 2_000);
        assert_eq!(s.intended_us(3_000_000), 1_000 + 1_000_000_000);
    }

    #[test]
    fn producers_interleave_into_one_even_schedule() {
        let (rate, batch, n) = (10_000, 10, 4);
        let mut all: Vec<u64> = (0..n)
            .flat_map(|i| {
                let s = OpenLoop::new(0, rate, batch, n, i);
                (0..100).map(move |k| s.intended_us(k))
            })
            .collect();
        all.sort_unstable();
        // 10 messages per batch at 10k msgs/s: one batch per millisecond across all producers.
        for (k, t) in all.iter().enumerate() {
            assert_eq!(*t, k as u64 * 1_000);
        }
    }

    #[test]
    fn overdue_batches_keep_their_intended_times() {
        let mut s = OpenLoop::new(0, 1_000, 1, 1, 0);
        assert_eq!(s.take_due(0), Some(0));
        assert_eq!(s.take_due(999), None);
        // Stalled until 5.5 ms: batches 1..=5 are all due now, each with its own time.
        let caught_up: Vec<u64> = std::iter::from_fn(|| s.take_due(5_500)).collect();
        assert_eq!(caught_up, vec![1_000, 2_000, 3_000, 4_000, 5_000]);
        assert_eq!(s.next_due_us(), 6_000);
        let unsent: Vec<u64> = s.unsent_before(9_000).collect();
        assert_eq!(unsent, vec![6_000, 7_000, 8_000]);
    }

    /// A FIFO server with a fixed service time that does nothing during `stall`.
    struct Server {
        free_at_us: u64,
        service_us: u64,
        stall: (u64, u64),
    }

    impl Server {
        fn complete(&mut self, arrival_us: u64) -> u64 {
            let mut start = arrival_us.max(self.free_at_us);
            if (self.stall.0..self.stall.1).contains(&start) {
                start = self.stall.1;
            }
            self.free_at_us = start + self.service_us;
            self.free_at_us
        }
    }

    const SECOND: u64 = 1_000_000;
    const STALL: (u64, u64) = (5 * SECOND, 6 * SECOND);

    /// Open loop at 1000 msgs/s for 10 s with at most `window` requests in flight. Returns
    /// (latency from intended time, latency from actual send time, publish delay).
    fn simulate_open_loop(window: usize) -> (Histogram<u64>, Histogram<u64>, Histogram<u64>) {
        let mut server = Server {
            free_at_us: 0,
            service_us: 100,
            stall: STALL,
        };
        let mut sched = OpenLoop::new(0, 1_000, 1, 1, 0);
        let (mut from_intended, mut from_sent, mut delay) = (hist(), hist(), hist());
        let mut inflight: VecDeque<(u64, u64, u64)> = VecDeque::new(); // (done, intended, sent)
        let mut now = 0;
        while sched.next_due_us() < 10 * SECOND {
            // Retire everything finished by now.
            while inflight.front().is_some_and(|f| f.0 <= now) {
                if let Some((done, intended, sent)) = inflight.pop_front() {
                    record(&mut from_intended, done - intended, 1);
                    record(&mut from_sent, done - sent, 1);
                }
            }
            if inflight.len() < window {
                if let Some(intended) = sched.take_due(now) {
                    record(&mut delay, now - intended, 1);
                    inflight.push_back((server.complete(now), intended, now));
                    continue;
                }
                now = sched.next_due_us();
            } else if let Some(f) = inflight.front() {
                now = now.max(f.0); // blocked: wait for the oldest ack
            }
        }
        for (done, intended, sent) in inflight {
            record(&mut from_intended, done - intended, 1);
            record(&mut from_sent, done - sent, 1);
        }
        (from_intended, from_sent, delay)
    }

    #[test]
    fn open_loop_latency_shows_a_stall_in_the_percentiles() {
        let (corrected, _, delay) = simulate_open_loop(usize::MAX);
        assert_eq!(corrected.len(), 10_000);
        // A 1 s stall in a 10 s run delays ~10% of the intended sends by up to 1 s.
        assert!(corrected.value_at_quantile(0.5) < 1_000);
        assert!(
            corrected.value_at_quantile(0.95) > 400_000,
            "{}",
            corrected.value_at_quantile(0.95)
        );
        assert!(corrected.value_at_quantile(0.99) > 900_000);
        // With an unbounded window the sender itself is never late.
        assert_eq!(delay.max(), 0);
    }

    #[test]
    fn bounded_window_stall_is_hidden_from_send_time_but_not_from_intended_time() {
        let (corrected, naive, delay) = simulate_open_loop(8);
        assert_eq!(corrected.len(), 10_000);
        // Measured from the actual send, only the 8 requests stuck in the window look slow.
        assert!(
            naive.value_at_quantile(0.99) < 1_000,
            "{}",
            naive.value_at_quantile(0.99)
        );
        // Measured from the intended time, the stall covers ~10% of all samples.
        assert!(corrected.value_at_quantile(0.95) > 400_000);
        assert!(corrected.value_at_quantile(0.99) > 900_000);
        // And the publish delay histogram tells why: the sender was held back.
        assert!(delay.value_at_quantile(0.99) > 900_000);
    }

    /// Closed loop with one request in flight, as fast as the server answers.
    fn simulate_closed_loop(expected_interval_us: Option<u64>) -> Histogram<u64> {
        let mut server = Server {
            free_at_us: 0,
            service_us: 100,
            stall: STALL,
        };
        let mut h = hist();
        let mut now = 0;
        while now < 10 * SECOND {
            let done = server.complete(now);
            match expected_interval_us {
                Some(i) => record_closed_loop_corrected(&mut h, done - now, 1, i),
                None => record(&mut h, done - now, 1),
            }
            now = done;
        }
        h
    }

    #[test]
    fn closed_loop_hides_a_stall_unless_corrected() {
        let naive = simulate_closed_loop(None);
        // One sample of ~1 s among ~90k of 100 us: invisible at p99.99.
        assert!(
            naive.value_at_quantile(0.9999) <= 101,
            "{}",
            naive.value_at_quantile(0.9999)
        );
        assert!(naive.max() >= 999_000);
        // The calibrated interval (the warm-up median, here the service time) back-fills the
        // ~10k requests the loop would have sent during the stall.
        let corrected = simulate_closed_loop(Some(100));
        assert!(corrected.len() > naive.len() + 9_000);
        assert!(corrected.value_at_quantile(0.95) > 400_000);
        assert!(corrected.value_at_quantile(0.99) > 900_000);
        assert_eq!(
            corrected.value_at_quantile(0.5),
            naive.value_at_quantile(0.5)
        );
    }

    #[test]
    fn record_clamps_out_of_range_values() {
        let mut h = hist();
        record(&mut h, 0, 1);
        record(&mut h, u64::MAX, 2);
        assert_eq!(h.min(), 0);
        assert!(h.equivalent(h.max(), h.high()));
        // A huge value with a zero interval adds a bounded number of synthetic samples.
        let before = h.len();
        record_closed_loop_corrected(&mut h, u64::MAX, 1, 0);
        assert!(
            h.len() - before <= CORRECTION_SAMPLES_MAX + 1,
            "{}",
            h.len() - before
        );
    }
}
