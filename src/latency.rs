//! A fixed-bucket latency histogram shared by the composite's stats and `/metrics`.
//!
//! Lock-free (one atomic per bucket) so recording on the publish path costs a few atomic adds.
//! Quantiles are read as the upper bound of the bucket that holds them: coarse, but stable and
//! cheap, which is what a status row and an A/B table need. Exact series go to Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the buckets, in seconds (the last bucket is +Inf).
pub const BOUNDS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_SECONDS.len() + 1],
    sum_micros: AtomicU64,
}

/// What a status row shows of a histogram.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BOUNDS_SECONDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BOUNDS_SECONDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative), the last one for +Inf.
    pub fn counts(&self) -> Vec<u64> {
        self.buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect()
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn summary(&self) -> LatencySummary {
        let counts = self.counts();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LatencySummary::default();
        }
        let quantile = |q: f64| {
            let rank = (q * count as f64).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    // +Inf bucket: report the largest finite bound rather than infinity.
                    let b = BOUNDS_SECONDS.get(i).copied().unwrap_or(BOUNDS_SECONDS[15]);
                    return b * 1e3;
                }
            }
            BOUNDS_SECONDS[15] * 1e3
        };
        LatencySummary {
            count,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            mean_ms: self.sum_seconds() * 1e3 / count as f64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_upper_bounds() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(800)); // bucket <= 1ms
        }
        h.record(Duration::from_millis(40)); // <= 50ms
        h.record(Duration::from_secs(30)); // +Inf
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_ms, 1.0);
        assert_eq!(s.p99_ms, 50.0);
        assert!((s.mean_ms - 301.184).abs() < 1e-6, "{}", s.mean_ms);
    }

    #[test]
    fn empty_histogram_reads_zero() {
        assert_eq!(Histogram::default().summary(), LatencySummary::default());
    }
}
