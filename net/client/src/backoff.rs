//! Retry delays: exponential backoff with jitter.
//!
//! Attempt `n` (1 = the first retry) waits `d = min(max, initial * 2^(n-1))`, of which half is
//! fixed and half uniformly random ("equal jitter"): never less than `d/2`, so a struggling
//! server gets its pause, and producers that failed together do not retry in lockstep.

use std::time::Duration;

/// Backoff settings of the producer's retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub initial: Duration,
    /// Cap on the delay (before jitter).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt` (1-based), with `random` (any u64) as the jitter source.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let shift = attempt.saturating_sub(1).min(31);
        let base = self
            .initial
            .checked_mul(1u32 << shift)
            .unwrap_or(self.max)
            .min(self.max);
        let half = base / 2;
        let span = u64::try_from((base - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 { 0 } else { random % (span + 1) };
        half + Duration::from_nanos(jitter)
    }
}

/// A small xorshift64* generator for jitter (not for anything that needs real randomness).
#[derive(Debug, Clone)]
pub(crate) struct Jitter {
    state: u64,
}

impl Jitter {
    /// Seeded from the clock and the address of a stack value, so that producers in one
    /// process differ.
    pub(crate) fn from_entropy() -> Jitter {
        let local = 0u8;
        let address = std::ptr::from_ref(&local) as usize as u64;
        let time = shardline_format::now_us().cast_unsigned();
        Jitter::new(time ^ address.rotate_left(32))
    }

    pub(crate) fn new(seed: u64) -> Jitter {
        Jitter {
            state: seed | 1, // xorshift never leaves 0
        }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_jitter_bounds() {
        let b = Backoff {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(200),
        };
        let mut j = Jitter::new(42);
        for attempt in 1..40 {
            let base = Duration::from_millis(10)
                .saturating_mul(1 << (attempt - 1).min(20))
                .min(Duration::from_millis(200));
            for _ in 0..50 {
                let d = b.delay(attempt, j.next_u64());
                assert!(
                    d >= base / 2 && d <= base,
                    "attempt {attempt}: {d:?} vs {base:?}"
                );
            }
        }
        assert_eq!(b.delay(1, 0), Duration::from_millis(5));
        assert_eq!(
            b.delay(1, 5_000_000),
            Duration::from_millis(10),
            "jitter spans d/2..=d"
        );
        assert_eq!(
            b.delay(u32::MAX, 0),
            Duration::from_millis(100),
            "no overflow"
        );
    }

    #[test]
    fn jitter_varies() {
        let b = Backoff::default();
        let mut j = Jitter::new(7);
        let delays: std::collections::HashSet<Duration> =
            (0..20).map(|_| b.delay(3, j.next_u64())).collect();
        assert!(delays.len() > 10, "{delays:?}");
        let mut zero = Jitter::new(0);
        assert_ne!(zero.next_u64(), 0);
    }
}
