//! Peak-EWMA latency estimator (after Finagle's and tower's `PeakEwma`).

use std::time::Duration;

/// A latency estimate that is pessimistic by design.
///
/// * **Peak-sensitive:** a sample above the estimate replaces it at once, so a
///   replica that slows down is avoided after one slow response.
/// * **Decays down:** a sample below the estimate pulls it down with weight
///   `1 - exp(-elapsed / decay)`, where `elapsed` is the time since the last
///   sample; a replica must stay fast for about `decay` to look fast again.
///   After a long silence the next sample dominates, so a recovered replica is
///   trusted again after one probe.
/// * **Failure penalty:** a failure counts as a sample of
///   `max(observed, failure_penalty, 2 × estimate)`, so an endpoint that fails
///   fast never looks attractive.
///
/// Time is passed in explicitly (`now`, a [`Duration`] since any fixed epoch
/// the caller chooses), so the estimator works the same under wall-clock time
/// (the [`Router`](super::Router)) and virtual time (the
/// [simulator](super::sim)).
#[derive(Debug, Clone, PartialEq)]
pub struct PeakEwma {
    estimate_ns: f64,
    updated_at: Option<Duration>,
    decay_ns: f64,
    failure_penalty: Duration,
}

impl PeakEwma {
    /// Default decay time constant (as in Finagle and tower's example).
    pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);
    /// Default minimum latency charged for a failure.
    pub const DEFAULT_FAILURE_PENALTY: Duration = Duration::from_secs(1);

    /// An estimator with no samples yet (estimate zero, meaning "unknown") and
    /// the given decay time constant (a zero decay is taken as 1 ns: every
    /// sample replaces the estimate).
    pub fn new(decay: Duration) -> Self {
        PeakEwma {
            estimate_ns: 0.0,
            updated_at: None,
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            failure_penalty: Self::DEFAULT_FAILURE_PENALTY,
        }
    }

    /// Sets the minimum latency charged for a failure.
    pub fn with_failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }

    /// Starts from `initial` instead of "unknown".
    pub fn with_initial(mut self, initial: Duration) -> Self {
        self.estimate_ns = initial.as_nanos() as f64;
        self
    }

    /// The current estimate; zero until the first sample (or `with_initial`).
    pub fn estimate(&self) -> Duration {
        Duration::from_nanos(self.estimate_ns.min(u64::MAX as f64) as u64)
    }

    /// The estimate as read at `now`: the stored estimate decayed toward zero
    /// by `exp(-(now - last sample) / decay)`, so an endpoint nobody has
    /// sampled for a while (because it looked slow) is tried again instead of
    /// being starved forever.
    pub fn estimate_at(&self, now: Duration) -> Duration {
        let Some(at) = self.updated_at else {
            return self.estimate();
        };
        let idle = now.saturating_sub(at).as_nanos() as f64;
        Duration::from_nanos((self.estimate_ns * (-idle / self.decay_ns).exp()).min(u64::MAX as f64) as u64)
    }

    /// The current estimate in nanoseconds.
    pub fn estimate_nanos(&self) -> f64 {
        self.estimate_ns
    }

    /// Records a successful response that took `latency`, observed at `now`.
    pub fn observe(&mut self, now: Duration, latency: Duration) {
        self.update(now, latency.as_nanos() as f64);
    }

    /// Records a failed request that took `latency`, observed at `now`,
    /// charging the failure penalty.
    pub fn observe_failure(&mut self, now: Duration, latency: Duration) {
        let sample = (latency.as_nanos() as f64)
            .max(self.failure_penalty.as_nanos() as f64)
            .max(2.0 * self.estimate_ns);
        self.update(now, sample);
    }

    fn update(&mut self, now: Duration, sample_ns: f64) {
        let first = self.updated_at.is_none() && self.estimate_ns == 0.0;
        if first || sample_ns > self.estimate_ns {
            self.estimate_ns = sample_ns;
        } else {
            let elapsed = self
                .updated_at
                .map_or(f64::INFINITY, |t| now.saturating_sub(t).as_nanos() as f64);
            let keep = (-elapsed / self.decay_ns).exp();
            self.estimate_ns = self.estimate_ns * keep + sample_ns * (1.0 - keep);
        }
        self.updated_at = Some(self.updated_at.map_or(now, |t| t.max(now)));
    }
}

impl Default for PeakEwma {
    fn default() -> Self {
        Self::new(Self::DEFAULT_DECAY)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn jumps_up_at_once_and_decays_down() {
        let mut e = PeakEwma::new(Duration::from_secs(1));
        assert_eq!(e.estimate(), Duration::ZERO);
        e.observe(Duration::ZERO, 10 * MS);
        assert_eq!(e.estimate(), 10 * MS);
        e.observe(100 * MS, 500 * MS);
        assert_eq!(e.estimate(), 500 * MS, "peak is taken at once");
        // A fast sample 100 ms later moves it down by about 1 - e^-0.1 ≈ 9.5 %.
        e.observe(200 * MS, 10 * MS);
        let est = e.estimate().as_secs_f64() * 1e3;
        assert!(est < 500.0 && est > 440.0, "{est}");
        // Read later without new samples, the estimate decays toward zero.
        let idle = e.estimate_at(Duration::from_secs(10) + 200 * MS);
        assert!(idle < e.estimate() / 1000, "{idle:?}");
        // After a long silence, one sample dominates.
        e.observe(Duration::from_secs(60), 10 * MS);
        assert!(e.estimate() < 11 * MS);
    }

    #[test]
    fn fast_failures_are_penalised() {
        let mut e = PeakEwma::new(Duration::from_secs(10)).with_failure_penalty(Duration::from_millis(250));
        e.observe(Duration::ZERO, 5 * MS);
        e.observe_failure(MS, Duration::from_micros(100));
        assert_eq!(e.estimate(), 250 * MS);
        e.observe_failure(2 * MS, Duration::from_micros(100));
        assert_eq!(e.estimate(), 500 * MS, "repeated failures double the estimate");
    }
}
