//! A fixed-bucket latency histogram shared by the composite's stats and `/metrics`.
//!
//! Lock-free (one atomic per bucket) so recording on the publish path costs a few atomic adds.
//! Quantiles are interpolated linearly within the bucket that holds them, as Prometheus's
//! `histogram_quantile` does, so a status row and the dashboard's panels read the same number
//! from the same buckets. One refinement: the bucket's range is narrowed to the smallest and
//! largest latency ever recorded, so a provider whose every write takes ~6 ms reads ~6 ms
//! rather than somewhere up to the bucket's 10 ms bound (a quantile never lies outside what was
//! observed). Exact series go to Prometheus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Upper bounds of the buckets, in seconds (the last bucket is +Inf).
pub const BOUNDS_SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS_SECONDS.len() + 1],
    sum_micros: AtomicU64,
    /// Smallest and largest latency recorded, in nanoseconds (`u64::MAX` and 0 while empty).
    min_nanos: AtomicU64,
    max_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: Default::default(),
            sum_micros: AtomicU64::new(0),
            min_nanos: AtomicU64::new(u64::MAX),
            max_nanos: AtomicU64::new(0),
        }
    }
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
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // Read before writing: the extremes rarely move, and a write on every record would make
        // every worker thread fight for the cache line.
        if nanos < self.min_nanos.load(Ordering::Relaxed) {
            self.min_nanos.fetch_min(nanos, Ordering::Relaxed);
        }
        if nanos > self.max_nanos.load(Ordering::Relaxed) {
            self.max_nanos.fetch_max(nanos, Ordering::Relaxed);
        }
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
        let observed = (
            self.min_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            self.max_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        );
        LatencySummary {
            count,
            p50_ms: quantile(0.5, &counts, observed) * 1e3,
            p99_ms: quantile(0.99, &counts, observed) * 1e3,
            mean_ms: self.sum_seconds() * 1e3 / count as f64,
        }
    }
}

/// The `q`-quantile, in seconds, of per-bucket `counts` (one per bound in [`BOUNDS_SECONDS`],
/// then +Inf; not all zero), as Prometheus's `histogram_quantile` computes it: find the bucket
/// holding rank `q * count` and interpolate linearly between its lower and upper bound (the
/// first bucket starts at 0; a rank in +Inf reads the largest finite bound). The bucket's range
/// is first narrowed to `observed` (the smallest and largest value recorded), which the
/// Prometheus series cannot know.
fn quantile(q: f64, counts: &[u64], observed: (f64, f64)) -> f64 {
    let total: u64 = counts.iter().sum();
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 || ((below + c) as f64) < rank {
            below += c;
            continue;
        }
        let Some(&upper) = BOUNDS_SECONDS.get(i) else {
            // +Inf: no upper bound to interpolate towards; Prometheus answers the largest
            // finite bound, and so do we, so that both read alike.
            break;
        };
        let lower = if i == 0 { 0.0 } else { BOUNDS_SECONDS[i - 1] };
        // A bucket holds values in (lower, upper], so its smallest value is <= upper and its
        // largest > lower: the narrowed range is never empty (lo == hi when all are equal).
        let (lo, hi) = (lower.max(observed.0), upper.min(observed.1));
        let within = (rank - below as f64) / c as f64;
        return lo + (hi - lo) * within.clamp(0.0, 1.0);
    }
    BOUNDS_SECONDS[BOUNDS_SECONDS.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    /// Per-bucket counts with `n` values in the bucket whose upper bound is `bound` (seconds).
    fn counts(entries: &[(f64, u64)]) -> Vec<u64> {
        let mut c = vec![0; BOUNDS_SECONDS.len() + 1];
        for &(bound, n) in entries {
            let i = BOUNDS_SECONDS
                .iter()
                .position(|b| *b == bound)
                .unwrap_or(BOUNDS_SECONDS.len());
            c[i] += n;
        }
        c
    }

    #[test]
    fn quantile_interpolates_within_the_bucket_as_histogram_quantile_does() {
        // No narrowing (nothing known of min and max): exactly Prometheus's answers.
        let unknown = (0.0, f64::INFINITY);
        let inf = f64::INFINITY;
        // (case, buckets, q, expected seconds)
        let cases: [(&str, Vec<u64>, f64, f64); 8] = [
            (
                "all in (5ms,10ms]: p50 halfway",
                counts(&[(0.01, 100)]),
                0.5,
                0.0075,
            ),
            (
                "all in (5ms,10ms]: p99",
                counts(&[(0.01, 100)]),
                0.99,
                0.00995,
            ),
            (
                "the first bucket starts at 0",
                counts(&[(0.0001, 10)]),
                0.5,
                0.00005,
            ),
            (
                "rank in the lower bucket",
                counts(&[(0.001, 98), (0.05, 1), (inf, 1)]),
                0.5,
                0.0005 + 0.0005 * 50.0 / 98.0,
            ),
            (
                "rank on a bucket's last value reads its upper bound",
                counts(&[(0.001, 98), (0.05, 1), (inf, 1)]),
                0.99,
                0.05,
            ),
            (
                "rank in +Inf reads the largest finite bound",
                counts(&[(0.001, 98), (0.05, 1), (inf, 1)]),
                1.0,
                10.0,
            ),
            (
                "empty buckets in between are skipped",
                counts(&[(0.001, 50), (0.1, 50)]),
                0.75,
                0.05 + 0.05 * 0.5,
            ),
            ("only +Inf", counts(&[(inf, 4)]), 0.5, 10.0),
        ];
        for (case, buckets, q, want) in cases {
            let got = quantile(q, &buckets, unknown);
            assert!(close(got, want), "{case}: got {got}, want {want}");
        }
    }

    #[test]
    fn quantile_stays_within_the_values_recorded() {
        // (case, recorded latencies in µs, expected p50 ms, expected p99 ms)
        let spread: Vec<u64> = (0..100).map(|i| 5_500 + i * 10).collect(); // 5.5 … 6.49 ms
        let cases: [(&str, Vec<u64>, f64, f64); 4] = [
            // The case: the old reading was the bucket bound, 10 ms, for both.
            ("Kafka at 6 ms", vec![6_000; 100], 6.0, 6.0),
            (
                "5.5 to 6.49 ms",
                spread,
                5.5 + 0.99 * 0.5,
                5.5 + 0.99 * 0.99,
            ),
            (
                "two buckets: the upper one narrowed to the largest value",
                [vec![800; 98], vec![40_000; 2]].concat(),
                // (0.5ms, 1ms] narrowed to [0.8ms, 1ms] by the smallest value only.
                0.8 + 0.2 * 50.0 / 98.0,
                25.0 + 15.0 * 0.5,
            ),
            ("one value", vec![3_000], 3.0, 3.0),
        ];
        for (case, micros, p50, p99) in cases {
            let h = Histogram::default();
            for m in &micros {
                h.record(Duration::from_micros(*m));
            }
            let s = h.summary();
            assert_eq!(s.count, micros.len() as u64, "{case}");
            assert!(close(s.p50_ms, p50), "{case}: p50 {} want {p50}", s.p50_ms);
            assert!(close(s.p99_ms, p99), "{case}: p99 {} want {p99}", s.p99_ms);
        }
    }

    #[test]
    fn mean_and_count_cover_the_inf_bucket() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(Duration::from_micros(800)); // bucket <= 1ms
        }
        h.record(Duration::from_millis(40)); // <= 50ms
        h.record(Duration::from_secs(30)); // +Inf
        let s = h.summary();
        assert_eq!(s.count, 100);
        assert!(close(s.p50_ms, 0.8 + 0.2 * 50.0 / 98.0), "{}", s.p50_ms);
        assert!(close(s.p99_ms, 50.0), "{}", s.p99_ms);
        assert!((s.mean_ms - 301.184).abs() < 1e-6, "{}", s.mean_ms);
    }

    #[test]
    fn empty_histogram_reads_zero() {
        assert_eq!(Histogram::default().summary(), LatencySummary::default());
    }
}
