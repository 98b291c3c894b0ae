//! What one benchmark run measured: counts, errors, throughput and latency percentiles, printed
//! for people or as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs up to this bound (longer ones are clamped,
/// and a request is never allowed to take that long: see `Config::request_timeout`).
const LATENCY_US_MAX: u64 = 120_000_000;
/// Three significant figures: 0.1 % resolution at every scale.
const SIGNIFICANT_FIGURES: u8 = 3;

/// A latency histogram for one kind of request.
#[derive(Debug, Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies::new()
    }
}

impl Latencies {
    pub fn new() -> Latencies {
        let histogram = Histogram::new_with_bounds(1, LATENCY_US_MAX, SIGNIFICANT_FIGURES)
            .expect("valid histogram bounds");
        Latencies { histogram }
    }

    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(LATENCY_US_MAX)
            .clamp(1, LATENCY_US_MAX);
        self.histogram
            .record(us)
            .expect("value within the histogram's bounds");
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms with the same bounds");
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Mean, percentiles and maximum in milliseconds (all zero when nothing was recorded).
    pub fn summary(&self) -> LatencySummary {
        if self.histogram.is_empty() {
            return LatencySummary::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        LatencySummary {
            count: self.histogram.len(),
            mean_ms: self.histogram.mean() / 1000.0,
            p50_ms: ms(self.histogram.value_at_quantile(0.50)),
            p90_ms: ms(self.histogram.value_at_quantile(0.90)),
            p99_ms: ms(self.histogram.value_at_quantile(0.99)),
            p999_ms: ms(self.histogram.value_at_quantile(0.999)),
            max_ms: ms(self.histogram.max()),
        }
    }
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `put`, `range`, `watch-latency`, …
    pub workload: String,
    /// Requests (for `watch-latency`: events) that succeeded.
    pub succeeded: u64,
    /// Failed requests by `code: message`.
    pub errors: BTreeMap<String, u64>,
    /// Wall time of the measured phase (setup such as creating watchers excluded).
    pub elapsed_seconds: f64,
    /// `succeeded / elapsed_seconds`.
    pub throughput_per_second: f64,
    /// Every successful request (or delivered event).
    pub latency: LatencySummary,
    /// Per kind of request, when a run mixes kinds (`mixed`: put and range; `watch-latency`:
    /// the puts that caused the events).
    pub breakdown: BTreeMap<String, LatencySummary>,
}

impl Report {
    /// Builds a report from a run's histograms: `parts` are (kind, latencies) pairs; all of them
    /// count towards `succeeded` and `latency` unless `counted` says which ones do.
    pub fn new(
        workload: &str,
        elapsed: Duration,
        parts: &[(&str, &Latencies)],
        counted: Option<&str>,
        errors: BTreeMap<String, u64>,
    ) -> Report {
        let mut all = Latencies::new();
        for (kind, latencies) in parts {
            if counted.is_none_or(|name| name == *kind) {
                all.merge(latencies);
            }
        }
        let elapsed_seconds = elapsed.as_secs_f64();
        let succeeded = all.count();
        let throughput_per_second = if elapsed_seconds > 0.0 {
            succeeded as f64 / elapsed_seconds
        } else {
            0.0
        };
        let breakdown = if parts.len() > 1 {
            parts
                .iter()
                .map(|(kind, latencies)| ((*kind).to_owned(), latencies.summary()))
                .collect()
        } else {
            BTreeMap::new()
        };
        Report {
            workload: workload.to_owned(),
            succeeded,
            errors,
            elapsed_seconds,
            throughput_per_second,
            latency: all.summary(),
            breakdown,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// A few lines for people, in the spirit of etcd's `benchmark` summary.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{}: {} succeeded, {} failed in {:.3} s: {:.1} /s",
            self.workload,
            self.succeeded,
            self.error_count(),
            self.elapsed_seconds,
            self.throughput_per_second
        );
        let _ = writeln!(text, "  latency (ms) {}", summary_line(&self.latency));
        for (kind, summary) in &self.breakdown {
            let _ = writeln!(text, "  {kind:<12} {}", summary_line(summary));
        }
        for (error, count) in &self.errors {
            let _ = writeln!(text, "  error x{count}: {error}");
        }
        text
    }
}

fn summary_line(summary: &LatencySummary) -> String {
    format!(
        "n {} mean {:.3} p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}",
        summary.count,
        summary.mean_ms,
        summary.p50_ms,
        summary.p90_ms,
        summary.p99_ms,
        summary.p999_ms,
        summary.max_ms
    )
}

/// The median of `values` (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[middle]
    } else {
        (sorted[middle - 1] + sorted[middle]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn percentiles_of_one_to_a_thousand_milliseconds() {
        let mut latencies = Latencies::new();
        for value in 1..=1000 {
            latencies.record(ms(value));
        }
        let summary = latencies.summary();
        assert_eq!(summary.count, 1000);
        // Three significant figures: within 0.1 % of the exact order statistic.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(summary.p50_ms, 500.0), "{summary:?}");
        assert!(close(summary.p90_ms, 900.0), "{summary:?}");
        assert!(close(summary.p99_ms, 990.0), "{summary:?}");
        assert!(close(summary.p999_ms, 999.0), "{summary:?}");
        assert!(close(summary.max_ms, 1000.0), "{summary:?}");
        assert!(close(summary.mean_ms, 500.5), "{summary:?}");
    }

    #[test]
    fn an_empty_histogram_summarizes_to_zeros() {
        assert_eq!(Latencies::new().summary(), LatencySummary::default());
    }

    #[test]
    fn extreme_latencies_are_clamped_not_lost() {
        let mut latencies = Latencies::new();
        latencies.record(Duration::ZERO);
        latencies.record(Duration::from_secs(10_000));
        assert_eq!(latencies.count(), 2);
        assert!(latencies.summary().max_ms >= 119_000.0);
    }

    #[test]
    fn merged_parts_add_up_and_only_counted_parts_count() {
        let mut puts = Latencies::new();
        let mut ranges = Latencies::new();
        for _ in 0..30 {
            puts.record(ms(2));
        }
        for _ in 0..70 {
            ranges.record(ms(1));
        }
        let errors = BTreeMap::from([("Unavailable: etcdserver: no leader".to_owned(), 3)]);
        let report = Report::new(
            "mixed",
            Duration::from_secs(2),
            &[("put", &puts), ("range", &ranges)],
            None,
            errors,
        );
        assert_eq!(report.succeeded, 100);
        assert_eq!(report.error_count(), 3);
        assert!((report.throughput_per_second - 50.0).abs() < 1e-9);
        assert_eq!(report.breakdown["put"].count, 30);
        assert_eq!(report.breakdown["range"].count, 70);
        let watch = Report::new(
            "watch-latency",
            Duration::from_secs(1),
            &[("event", &ranges), ("put", &puts)],
            Some("event"),
            BTreeMap::new(),
        );
        assert_eq!(watch.succeeded, 70);
        let parsed: Report = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(parsed, report);
        assert!(report.to_text().contains("error x3: Unavailable"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }
}
