//! Latency recording: one [`Recorder`] per client thread or task, merged at the end.
//!
//! Every latency is recorded in nanoseconds into an HdrHistogram with 3 significant digits
//! (relative error ≤ 0.1 %), covering 1 ns to [`MAX_LATENCY_NS`]; longer latencies are clamped
//! to the maximum, never dropped, so a stall still shows up in the tail. Recording costs a few
//! nanoseconds and takes no lock: each client owns its recorder, and [`Recorder::merge`] folds
//! them together after the run.
//!
//! With `--sample` a recorder also keeps a per-second series (operations, mean and max
//! latency), indexed by whole seconds since the run's common start instant.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Highest latency the histograms can hold (60 s); larger values are clamped to it.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// One per-second bucket of the `--sample` series.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SecondSample {
    pub ops: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
}

/// Latencies and error counts of one client (or, after merging, of the whole run).
#[derive(Clone, Debug)]
pub struct Recorder {
    hist: Histogram<u64>,
    /// Error counts by kind (a short stable name such as a gRPC code).
    errors: BTreeMap<String, u64>,
    /// `Some(start)` when the per-second series is kept.
    sample_start: Option<Instant>,
    samples: Vec<SecondSample>,
}

impl Recorder {
    /// An empty recorder; `sample_start` enables the per-second series relative to it.
    pub fn new(sample_start: Option<Instant>) -> Self {
        Recorder {
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
                .expect("histogram bounds are valid constants"),
            errors: BTreeMap::new(),
            sample_start,
            samples: Vec::new(),
        }
    }

    /// Records one successful operation that took `latency` and finished at `end`.
    pub fn record(&mut self, latency: Duration, end: Instant) {
        let ns = u64::try_from(latency.as_nanos())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LATENCY_NS);
        self.hist.saturating_record(ns);
        if let Some(start) = self.sample_start {
            let sec = end.saturating_duration_since(start).as_secs() as usize;
            if self.samples.len() <= sec {
                self.samples.resize(sec + 1, SecondSample::default());
            }
            let s = &mut self.samples[sec];
            s.ops += 1;
            s.sum_ns = s.sum_ns.saturating_add(ns);
            s.max_ns = s.max_ns.max(ns);
        }
    }

    /// Counts one failed operation of kind `kind`; failed operations are not in the histogram.
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_insert(0) += 1;
    }

    /// Folds `other` into `self`.
    pub fn merge(&mut self, other: &Recorder) {
        self.hist
            .add(&other.hist)
            .expect("histograms with identical bounds always merge");
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_insert(0) += v;
        }
        if self.samples.len() < other.samples.len() {
            self.samples
                .resize(other.samples.len(), SecondSample::default());
        }
        for (mine, theirs) in self.samples.iter_mut().zip(&other.samples) {
            mine.ops += theirs.ops;
            mine.sum_ns = mine.sum_ns.saturating_add(theirs.sum_ns);
            mine.max_ns = mine.max_ns.max(theirs.max_ns);
        }
    }

    /// Successful operations recorded.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    pub fn errors(&self) -> &BTreeMap<String, u64> {
        &self.errors
    }

    pub fn error_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The latency at quantile `q` (0.0..=1.0) in microseconds; 0 when nothing was recorded.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_us(&self) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.max() as f64 / 1000.0
    }

    pub fn mean_us(&self) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.mean() / 1000.0
    }

    pub fn samples(&self) -> &[SecondSample] {
        &self.samples
    }

    /// Points of the latency CDF, `(latency_us, fraction ≤ it)`, one per distinct recorded
    /// bucket (for plots).
    pub fn cdf_points(&self) -> Vec<(f64, f64)> {
        let total = self.hist.len();
        if total == 0 {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut seen = 0u64;
        for v in self.hist.iter_recorded() {
            seen += v.count_at_value();
            out.push((
                self.hist.highest_equivalent(v.value_iterated_to()) as f64 / 1000.0,
                seen as f64 / total as f64,
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_known_distribution() {
        let t0 = Instant::now();
        let mut r = Recorder::new(None);
        // 1..=1000 µs, one each: p50 is 500 µs, p99 990 µs, max 1000 µs (within 0.1 %).
        for us in 1..=1000u64 {
            r.record(Duration::from_micros(us), t0);
        }
        assert_eq!(r.count(), 1000);
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(r.quantile_us(0.5), 500.0), "{}", r.quantile_us(0.5));
        assert!(close(r.quantile_us(0.99), 990.0), "{}", r.quantile_us(0.99));
        assert!(close(r.max_us(), 1000.0), "{}", r.max_us());
        assert!(close(r.mean_us(), 500.5), "{}", r.mean_us());
    }

    #[test]
    fn empty_recorder_reports_zeros() {
        let r = Recorder::new(None);
        assert_eq!(r.count(), 0);
        assert_eq!(r.quantile_us(0.99), 0.0);
        assert_eq!(r.max_us(), 0.0);
        assert!(r.cdf_points().is_empty());
    }

    #[test]
    fn huge_latency_is_clamped_not_dropped() {
        let mut r = Recorder::new(None);
        r.record(Duration::from_secs(3600), Instant::now());
        assert_eq!(r.count(), 1);
        assert!((r.max_us() - MAX_LATENCY_NS as f64 / 1000.0).abs() / r.max_us() < 0.001);
    }

    #[test]
    fn merge_adds_counts_errors_and_samples() {
        let t0 = Instant::now();
        let mut a = Recorder::new(Some(t0));
        let mut b = Recorder::new(Some(t0));
        a.record(Duration::from_micros(10), t0);
        a.error("Unavailable");
        b.record(Duration::from_micros(30), t0 + Duration::from_millis(1500));
        b.record(Duration::from_micros(20), t0 + Duration::from_millis(1600));
        b.error("Unavailable");
        b.error("DeadlineExceeded");
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.error_total(), 3);
        assert_eq!(a.errors()["Unavailable"], 2);
        assert_eq!(a.errors()["DeadlineExceeded"], 1);
        assert_eq!(a.samples().len(), 2);
        assert_eq!(a.samples()[0].ops, 1);
        assert_eq!(a.samples()[1].ops, 2);
        assert_eq!(a.samples()[1].max_ns, 30_000);
        assert_eq!(a.samples()[1].sum_ns, 50_000);
    }

    #[test]
    fn cdf_is_monotone_and_ends_at_one() {
        let t0 = Instant::now();
        let mut r = Recorder::new(None);
        for us in [5u64, 5, 7, 100, 2000] {
            r.record(Duration::from_micros(us), t0);
        }
        let pts = r.cdf_points();
        assert_eq!(pts.len(), 4);
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));
        assert!((pts.last().unwrap().1 - 1.0).abs() < 1e-12);
        assert!((pts[0].1 - 0.4).abs() < 1e-12);
    }
}
