//! Retry delays: exponential backoff with full jitter.

use std::time::Duration;

/// How long a failed task waits before its next attempt.
///
/// [`Backoff::exponential`] doubles a base delay per failed attempt up to a
/// cap and, by default, applies *full jitter*: the delay is drawn uniformly
/// from `[0, min(max, base · 2^(attempt-1))]`, which spreads the retries of a
/// burst of failures instead of bringing them back in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: bool,
}

impl Default for Backoff {
    /// 100 ms doubling up to 30 s, with full jitter.
    fn default() -> Self {
        Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30))
    }
}

impl Backoff {
    /// `base · 2^(attempt-1)`, capped at `max`, with full jitter.
    pub fn exponential(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            jitter: true,
        }
    }

    /// The same delay after every failure (no jitter).
    pub fn fixed(delay: Duration) -> Self {
        Backoff {
            base: delay,
            max: delay,
            jitter: false,
        }
    }

    /// Turns full jitter on or off.
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The upper bound of the delay after failed attempt `attempt` (1-based).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(63);
        let factor = 1u64 << shift;
        let nanos = (self.base.as_nanos()).saturating_mul(u128::from(factor));
        let capped = nanos.min(self.max.as_nanos());
        Duration::from_nanos(u64::try_from(capped).unwrap_or(u64::MAX))
    }

    /// The delay after failed attempt `attempt` (1-based); `random` is a
    /// uniformly distributed 64-bit value used for the jitter.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let ceiling = self.ceiling(attempt);
        if !self.jitter {
            return ceiling;
        }
        // Scale the ceiling by random / 2^64 (a uniform fraction in [0, 1)).
        let nanos = ceiling.as_nanos();
        let scaled = (nanos * u128::from(random)) >> 64;
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.base > self.max {
            return Err(format!(
                "backoff base {:?} exceeds its max {:?}",
                self.base, self.max
            ));
        }
        if self.max.is_zero() {
            return Err("backoff max must be greater than zero".into());
        }
        Ok(())
    }
}

/// A lock-free, seedable pseudo-random sequence (SplitMix64 over an atomic
/// counter): cheap enough for the retry path, deterministic for tests.
#[derive(Debug)]
pub(crate) struct JitterRng {
    state: std::sync::atomic::AtomicU64,
}

impl JitterRng {
    pub(crate) fn new(seed: u64) -> Self {
        JitterRng {
            state: std::sync::atomic::AtomicU64::new(seed),
        }
    }

    pub(crate) fn next_u64(&self) -> u64 {
        let mut z = self
            .state
            .fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_to_the_cap() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1)).jitter(false);
        assert_eq!(b.delay(1, 0), Duration::from_millis(100));
        assert_eq!(b.delay(2, 0), Duration::from_millis(200));
        assert_eq!(b.delay(4, 0), Duration::from_millis(800));
        assert_eq!(b.delay(5, 0), Duration::from_secs(1));
        assert_eq!(b.delay(500, 0), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let b = Backoff::exponential(Duration::from_millis(10), Duration::from_secs(10));
        let rng = JitterRng::new(7);
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay(6, rng.next_u64())).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(320)));
        assert!(delays.iter().any(|d| *d < Duration::from_millis(80)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(240)));
        assert_eq!(b.delay(3, 0), Duration::ZERO);
    }

    #[test]
    fn seeded_rng_is_deterministic() {
        let (a, b) = (JitterRng::new(42), JitterRng::new(42));
        let xs: Vec<u64> = (0..5).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(xs[0], xs[1]);
    }

    #[test]
    fn validation_refuses_base_above_max() {
        assert!(
            Backoff::exponential(Duration::from_secs(2), Duration::from_secs(1))
                .validate()
                .is_err()
        );
        assert!(Backoff::fixed(Duration::ZERO).validate().is_err());
        assert!(Backoff::default().validate().is_ok());
    }
}
