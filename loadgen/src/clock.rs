//! One process-wide monotonic clock in microseconds.
//!
//! Producers stamp messages with it and consumers read it on receipt, so end-to-end latency is a
//! difference of two readings of the same `Instant` base: no wall-clock steps, no cross-thread
//! skew. (A future network driver measuring across processes will need its own agreement.)

use std::sync::OnceLock;
use std::time::{Duration, Instant};

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The instant that `now_us() == 0` refers to; fixed at the first call.
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Microseconds since [`epoch`].
pub fn now_us() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Whole microseconds of a duration, saturating.
pub fn duration_us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// How long from now until `deadline_us` (zero if it has passed).
pub fn until_us(deadline_us: u64) -> Duration {
    Duration::from_micros(deadline_us.saturating_sub(now_us()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_is_monotonic_and_shared_across_threads() {
        let a = now_us();
        let b = std::thread::spawn(now_us).join().unwrap_or(0);
        let c = now_us();
        assert!(a <= b && b <= c, "{a} {b} {c}");
    }
}
