//! Latency histograms, their summaries and spectra, and per-second counters.
//!
//! Every thread records into its own histograms (no sharing on the hot path); the runner merges
//! them with [`merge`] at the end. All histograms have the same fixed range (1 us .. 1 h, three
//! significant digits), so merging never resizes and never fails for that reason.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram tracks; larger values are clamped to it.
pub const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Significant decimal digits kept by every histogram.
pub const SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram (microseconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_DIGITS)
        .unwrap_or_else(|e| panic!("constant histogram bounds are valid: {e}"))
}

/// Adds `from` into `into`.
pub fn merge(into: &mut Histogram<u64>, from: &Histogram<u64>) -> Result<(), String> {
    into.add(from)
        .map_err(|e| format!("merging histograms: {e:?}"))
}

/// The percentiles every report shows, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencySummary {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    pub mean: f64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// One point of a percentile spectrum.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SpectrumPoint {
    /// 0..=100.
    pub percentile: f64,
    pub value_us: u64,
}

/// Most points kept in a spectrum (charts and JSON stay small).
pub const SPECTRUM_POINTS_MAX: usize = 400;

/// The percentile spectrum of `h` as HdrHistogram plots it: denser towards the tail, ending at
/// the maximum (percentile 100).
pub fn spectrum(h: &Histogram<u64>) -> Vec<SpectrumPoint> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<SpectrumPoint> = h
        .iter_quantiles(5)
        .map(|v| SpectrumPoint {
            percentile: v.quantile_iterated_to() * 100.0,
            value_us: v.value_iterated_to(),
        })
        .collect();
    if out.len() > SPECTRUM_POINTS_MAX {
        // Keep the tail intact (it is what the chart is for); thin out the body evenly.
        let step = out.len().div_ceil(SPECTRUM_POINTS_MAX);
        let last = out.len() - 1;
        out = out
            .into_iter()
            .enumerate()
            .filter(|(i, p)| i % step == 0 || *i == last || p.percentile >= 99.9)
            .map(|(_, p)| p)
            .collect();
    }
    if out.last().is_none_or(|p| p.percentile < 100.0) {
        out.push(SpectrumPoint {
            percentile: 100.0,
            value_us: h.max(),
        });
    }
    out
}

/// Value at percentile `p` (0..=100), or 0 for an empty histogram.
pub fn percentile(h: &Histogram<u64>, p: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_percentile(p)
    }
}

/// Mean, or 0 for an empty histogram.
pub fn mean(h: &Histogram<u64>) -> f64 {
    if h.is_empty() { 0.0 } else { h.mean() }
}

/// Counts per whole second since the start of the run, with a fixed number of slots (the last
/// slot absorbs anything later, so memory stays bounded whatever the clock says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerSecond {
    counts: Vec<u64>,
}

impl PerSecond {
    pub fn new(seconds_max: usize) -> Self {
        PerSecond {
            counts: vec![0; seconds_max.max(1)],
        }
    }

    /// Adds `n` at `at_us` microseconds after the start.
    pub fn add(&mut self, at_us: u64, n: u64) {
        let last = self.counts.len() - 1;
        let i = usize::try_from(at_us / 1_000_000).map_or(last, |i| i.min(last));
        self.counts[i] += n;
    }

    pub fn merge(&mut self, other: &PerSecond) {
        if other.counts.len() > self.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_equal_one_histogram_of_all_samples() {
        let mut parts = [new_histogram(), new_histogram(), new_histogram()];
        let mut whole = new_histogram();
        for v in 1..=30_000u64 {
            let value = v * 37 % 100_000 + 1;
            parts[(v % 3) as usize].record(value).unwrap();
            whole.record(value).unwrap();
        }
        let mut merged = new_histogram();
        for p in &parts {
            merge(&mut merged, p).unwrap();
        }
        assert_eq!(merged.len(), whole.len());
        assert_eq!(LatencySummary::of(&merged), LatencySummary::of(&whole));
        assert_eq!(spectrum(&merged), spectrum(&whole));
    }

    #[test]
    fn summary_has_three_significant_digits() {
        let mut h = new_histogram();
        for v in 1..=100_000u64 {
            h.record(v).unwrap();
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 100_000);
        for (got, want) in [
            (s.p50, 50_000),
            (s.p99, 99_000),
            (s.p999, 99_900),
            (s.max, 100_000),
        ] {
            let err = got.abs_diff(want) as f64 / want as f64;
            assert!(err < 0.001, "{got} vs {want}");
        }
        assert!((s.mean - 50_000.5).abs() < 50.0);
        assert_eq!(
            LatencySummary::of(&new_histogram()),
            LatencySummary::default()
        );
    }

    #[test]
    fn spectrum_is_monotonic_bounded_and_ends_at_max() {
        let mut h = new_histogram();
        for v in 1..=1_000_000u64 {
            h.record(v % 5_000 + 1).unwrap();
        }
        h.record(9_999_999).unwrap();
        let s = spectrum(&h);
        assert!(s.len() <= SPECTRUM_POINTS_MAX + 50, "{}", s.len());
        assert!(s.windows(2).all(|w| w[0].percentile <= w[1].percentile));
        assert!(s.windows(2).all(|w| w[0].value_us <= w[1].value_us));
        let last = s.last().unwrap();
        assert_eq!(last.percentile, 100.0);
        assert!(h.equivalent(last.value_us, 9_999_999));
        assert!(spectrum(&new_histogram()).is_empty());
    }

    #[test]
    fn per_second_counts_are_bounded_and_merge() {
        let mut a = PerSecond::new(3);
        a.add(0, 1);
        a.add(999_999, 1);
        a.add(1_000_000, 5);
        a.add(u64::MAX, 7);
        assert_eq!(a.counts(), &[2, 5, 7]);
        let mut b = PerSecond::new(4);
        b.add(3_500_000, 1);
        b.merge(&a);
        assert_eq!(b.counts(), &[2, 5, 7, 1]);
    }
}
