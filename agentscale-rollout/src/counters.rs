//! Per-version counters: requests, errors, a latency histogram and scores.
//! Cumulative and lock-free; the analysis subtracts two snapshots to get
//! one interval's window (like a Prometheus `increase()`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Latency buckets: bucket `i` holds latencies up to `0.1 ms × 1.1^i`, so a
/// quantile read from it is at most 10 % above the true value; the last
/// bucket holds everything above ~70 minutes.
pub const LATENCY_BUCKETS: usize = 200;
const FIRST_BOUND_MS: f64 = 0.1;
const GROWTH: f64 = 1.1;

fn bucket_bound_ms(i: usize) -> f64 {
    FIRST_BOUND_MS * GROWTH.powi(i as i32)
}

fn bucket_of(ms: f64) -> usize {
    if ms <= FIRST_BOUND_MS {
        return 0;
    }
    let i = ((ms / FIRST_BOUND_MS).ln() / GROWTH.ln()).ceil() as usize;
    i.min(LATENCY_BUCKETS - 1)
}

/// Score sums are kept in millionths so they can be atomic integers.
const SCORE_SCALE: f64 = 1e6;

/// Live counters of one version (cheap to share: hold it in an `Arc`).
#[derive(Debug)]
pub struct VersionCounters {
    requests: AtomicU64,
    errors: AtomicU64,
    latency: Box<[AtomicU64]>,
    score_micros: AtomicU64,
    scores: AtomicU64,
}

impl Default for VersionCounters {
    fn default() -> Self {
        VersionCounters {
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: (0..LATENCY_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            score_micros: AtomicU64::new(0),
            scores: AtomicU64::new(0),
        }
    }
}

impl VersionCounters {
    /// Counts one finished request: whether it failed and how long it took.
    pub fn record(&self, ok: bool, latency: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let b = bucket_of(latency.as_secs_f64() * 1e3);
        self.latency[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one quality score in `0..=1` (from shadow comparisons or
    /// online evaluation).
    pub fn record_score(&self, score: f64) {
        let s = if score.is_nan() {
            0.0
        } else {
            score.clamp(0.0, 1.0)
        };
        self.score_micros
            .fetch_add((s * SCORE_SCALE).round() as u64, Ordering::Relaxed);
        self.scores.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            latency: self.latency.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
            score_micros: self.score_micros.load(Ordering::Relaxed),
            scores: self.scores.load(Ordering::Relaxed),
        }
    }
}

/// A reading of [`VersionCounters`], or the difference of two (a window).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct CounterSnapshot {
    /// Requests finished.
    pub requests: u64,
    /// Of which failed.
    pub errors: u64,
    #[serde(skip)]
    latency: Vec<u64>,
    #[serde(skip)]
    score_micros: u64,
    /// Scores recorded.
    pub scores: u64,
}

impl CounterSnapshot {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &CounterSnapshot) -> CounterSnapshot {
        CounterSnapshot {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self
                .latency
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.latency.get(i).copied().unwrap_or(0)))
                .collect(),
            score_micros: self.score_micros.saturating_sub(earlier.score_micros),
            scores: self.scores.saturating_sub(earlier.scores),
        }
    }

    /// `errors / requests` (`None` without requests).
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// Mean of the recorded scores (`None` without scores).
    pub fn mean_score(&self) -> Option<f64> {
        (self.scores > 0).then(|| self.score_micros as f64 / SCORE_SCALE / self.scores as f64)
    }

    /// The `q` quantile of the latency in milliseconds (the upper bound of
    /// its bucket; `None` without requests).
    pub fn latency_quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_bound_ms(i));
            }
        }
        Some(bucket_bound_ms(LATENCY_BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_rates_and_quantiles() {
        let c = VersionCounters::default();
        for i in 0..100u64 {
            c.record(i % 10 != 0, Duration::from_millis(if i < 95 { 10 } else { 500 }));
        }
        let a = c.snapshot();
        assert_eq!(a.error_rate(), Some(0.1));
        let p95 = a.latency_quantile_ms(0.95).expect("p95");
        assert!((10.0..11.0).contains(&p95), "{p95}");
        let p99 = a.latency_quantile_ms(0.99).expect("p99");
        assert!((500.0..550.0).contains(&p99), "{p99}");
        c.record(false, Duration::from_millis(1));
        c.record_score(0.5);
        let w = c.snapshot().since(&a);
        assert_eq!((w.requests, w.errors), (1, 1));
        assert_eq!(w.mean_score(), Some(0.5));
        assert_eq!(CounterSnapshot::default().since(&a).error_rate(), None);
    }
}
