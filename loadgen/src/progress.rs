//! The live progress line on stderr, once per second, only when stderr is a terminal.
//!
//! Worker threads never touch the line: they bump atomic counters and, at most once a second,
//! fold their interval histograms into a shared one under a mutex (one lock per thread per
//! second). A reporter thread reads those and redraws the line.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::clock;
use crate::runner::RunTimes;
use crate::stats;

/// Shared by workers and the reporter.
pub struct Progress {
    pub acked: AtomicU64,
    pub received: AtomicU64,
    pub errors: AtomicU64,
    publish: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            acked: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            publish: Mutex::new(stats::new_histogram()),
            e2e: Mutex::new(stats::new_histogram()),
        }
    }
}

/// How often workers fold their interval histograms into [`Progress`].
pub const FLUSH_INTERVAL_US: u64 = 1_000_000;

/// A worker's side: an interval histogram flushed to the shared one once a second.
pub struct IntervalRecorder {
    progress: Option<Arc<Progress>>,
    interval: Histogram<u64>,
    next_flush_us: u64,
    e2e: bool,
}

impl IntervalRecorder {
    /// Records nothing when `progress` is `None`.
    pub fn new(progress: Option<Arc<Progress>>, e2e: bool) -> Self {
        IntervalRecorder {
            progress,
            interval: stats::new_histogram(),
            next_flush_us: 0,
            e2e,
        }
    }

    pub fn record(&mut self, value_us: u64, count: u64) {
        if self.progress.is_some() {
            crate::scheduler::record(&mut self.interval, value_us, count);
        }
    }

    /// Folds the interval into the shared histogram if a second has passed (or `force`).
    pub fn maybe_flush(&mut self, now_us: u64, force: bool) {
        let Some(p) = &self.progress else { return };
        if !force && now_us < self.next_flush_us {
            return;
        }
        self.next_flush_us = now_us + FLUSH_INTERVAL_US;
        if self.interval.is_empty() {
            return;
        }
        let shared = if self.e2e { &p.e2e } else { &p.publish };
        if let Ok(mut h) = shared.lock() {
            let _ = stats::merge(&mut h, &self.interval);
        }
        self.interval.reset();
    }
}

fn p99_ms(h: &Mutex<Histogram<u64>>) -> Option<f64> {
    let h = h.lock().ok()?;
    (!h.is_empty()).then(|| h.value_at_quantile(0.99) as f64 / 1000.0)
}

fn format_line(p: &Progress, times: &RunTimes, now_us: u64, rates: (f64, f64)) -> String {
    let elapsed = now_us.saturating_sub(times.start_us) as f64 / 1e6;
    let total = times.end_us.saturating_sub(times.start_us) as f64 / 1e6;
    let phase = if now_us < times.warmup_end_us {
        "warm-up"
    } else if now_us < times.end_us {
        "measure"
    } else {
        "drain"
    };
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.2} ms"));
    format!(
        "[{elapsed:5.1}s/{total:.0}s {phase}] sent {:>9.0} msg/s  recv {:>9.0} msg/s  \
         pub p99 {}  e2e p99 {}  errors {}  remaining {:.0}s",
        rates.0,
        rates.1,
        ms(p99_ms(&p.publish)),
        ms(p99_ms(&p.e2e)),
        p.errors.load(Ordering::Relaxed),
        (total - elapsed).max(0.0),
    )
}

/// Starts the reporter; it redraws once a second until `stop` is signalled or dropped, then
/// clears the line. Percentiles restart when the warm-up ends.
pub fn spawn_reporter(
    progress: Arc<Progress>,
    times: RunTimes,
    stop: flume::Receiver<()>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("loadgen-progress".into())
        .spawn(move || {
            let mut tick_us = times.start_us + 1_000_000;
            let (mut last_acked, mut last_received, mut last_us) = (0, 0, times.start_us);
            let mut warm = true;
            // Any message, or the sender going away, ends the loop.
            while let Err(flume::RecvTimeoutError::Timeout) =
                stop.recv_timeout(clock::until_us(tick_us))
            {
                let now = clock::now_us();
                if warm && now >= times.warmup_end_us {
                    warm = false;
                    for h in [&progress.publish, &progress.e2e] {
                        if let Ok(mut h) = h.lock() {
                            h.reset();
                        }
                    }
                }
                let acked = progress.acked.load(Ordering::Relaxed);
                let received = progress.received.load(Ordering::Relaxed);
                let secs = Duration::from_micros(now.saturating_sub(last_us).max(1)).as_secs_f64();
                let rates = (
                    acked.saturating_sub(last_acked) as f64 / secs,
                    received.saturating_sub(last_received) as f64 / secs,
                );
                (last_acked, last_received, last_us) = (acked, received, now);
                let line = format_line(&progress, &times, now, rates);
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[2K{line}");
                let _ = err.flush();
                tick_us += 1_000_000;
            }
            let _ = write!(std::io::stderr(), "\r\x1b[2K");
        })
}
