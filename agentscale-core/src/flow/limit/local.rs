//! [`LocalLimiter`]: limits kept in process memory.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::{
    check_definition, Admission, Exceeded, KeyCounters, KeyStats, Limit, Limiter, Permit, IN_FLIGHT_RETRY,
};
use crate::error::Result;

/// Limits, token buckets and in-flight slots in this process: for a single
/// worker process or the in-memory queue. Time is tokio's clock, so tests
/// can pause it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> agentscale_core::Result<()> {
/// use std::time::Duration;
/// use agentscale_core::flow::limit::{Admission, Limit, Limiter, LocalLimiter};
///
/// let limiter = LocalLimiter::new();
/// limiter.set_limit("tenant:acme", Limit::builder().rate_per_second(2.0).burst(1).build()?).await?;
/// assert!(matches!(limiter.acquire("tenant:acme", Duration::from_secs(60)).await?, Admission::Granted(_)));
/// assert!(matches!(limiter.acquire("tenant:acme", Duration::from_secs(60)).await?, Admission::Deferred { .. }));
/// # Ok(()) }
/// ```
#[derive(Debug, Default)]
pub struct LocalLimiter {
    state: Mutex<HashMap<String, KeyState>>,
    counters: KeyCounters,
}

#[derive(Debug)]
struct KeyState {
    limit: Limit,
    tokens: f64,
    refilled: Instant,
    /// permit id -> counted until.
    held: BTreeMap<u64, Instant>,
    next_id: u64,
}

impl LocalLimiter {
    /// An empty limiter: no key is limited.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn set_limit(&self, key: &str, limit: Limit) -> Result<()> {
        check_definition(key, &limit)?;
        let now = Instant::now();
        let mut st = self.state.lock();
        match st.get_mut(key) {
            Some(s) => {
                s.tokens = s.tokens.min(limit.effective_burst());
                s.limit = limit;
            }
            None => {
                st.insert(
                    key.to_string(),
                    KeyState {
                        tokens: limit.effective_burst(),
                        limit,
                        refilled: now,
                        held: BTreeMap::new(),
                        next_id: 0,
                    },
                );
            }
        }
        Ok(())
    }

    async fn remove_limit(&self, key: &str) -> Result<()> {
        self.state.lock().remove(key);
        Ok(())
    }

    async fn limits(&self) -> Result<Vec<(String, Limit)>> {
        let mut v: Vec<(String, Limit)> = self
            .state
            .lock()
            .iter()
            .map(|(k, s)| (k.clone(), s.limit.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }

    async fn acquire(&self, key: &str, hold: Duration) -> Result<Admission> {
        let now = Instant::now();
        let admission = {
            let mut st = self.state.lock();
            match st.get_mut(key) {
                None => Admission::Granted(Permit::new(key, None)),
                Some(s) => s.decide(key, now, hold),
            }
        };
        self.counters.record(key, &admission);
        Ok(admission)
    }

    async fn release(&self, permit: &Permit) -> Result<()> {
        if let Some(id) = permit.id().and_then(|i| i.parse::<u64>().ok()) {
            if let Some(s) = self.state.lock().get_mut(permit.key()) {
                s.held.remove(&id);
            }
        }
        Ok(())
    }

    fn stats(&self) -> Vec<KeyStats> {
        self.counters.snapshot()
    }
}

impl KeyState {
    fn decide(&mut self, key: &str, now: Instant, hold: Duration) -> Admission {
        if let Some(max) = self.limit.max_in_flight {
            self.held.retain(|_, until| *until > now);
            if self.held.len() >= max as usize {
                return Admission::Deferred {
                    retry_in: IN_FLIGHT_RETRY,
                    exceeded: Exceeded::InFlight,
                };
            }
        }
        if let Some(rate) = self.limit.rate_per_second {
            let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
            self.tokens = (self.tokens + elapsed * rate).min(self.limit.effective_burst());
            self.refilled = now;
            // The epsilon absorbs float error of many small refills.
            if self.tokens + 1e-9 < 1.0 {
                let wait = (1.0 - self.tokens) / rate;
                return Admission::Deferred {
                    retry_in: Duration::from_secs_f64(wait.min(3600.0)).max(Duration::from_millis(1)),
                    exceeded: Exceeded::Rate,
                };
            }
            self.tokens = (self.tokens - 1.0).max(0.0);
        }
        if self.limit.max_in_flight.is_none() {
            return Admission::Granted(Permit::new(key, None));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.held
            .insert(id, now + hold.min(Duration::from_secs(365 * 86_400)));
        Admission::Granted(Permit::new(key, Some(id.to_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn granted(a: &Admission) -> bool {
        matches!(a, Admission::Granted(_))
    }

    #[tokio::test]
    async fn sync_limits_sets_and_removes_and_refuses_bad_definitions() {
        use std::collections::BTreeMap;
        let l = LocalLimiter::new();
        let cap = |n| Limit::builder().max_in_flight(n).build().expect("limit");
        let first: BTreeMap<String, Limit> = [("a".to_string(), cap(1)), ("b".to_string(), cap(2))].into();
        assert_eq!(super::super::sync_limits(&l, &first).await.expect("sync"), (2, 0));
        let next: BTreeMap<String, Limit> = [("b".to_string(), cap(5)), ("c".to_string(), cap(3))].into();
        assert_eq!(super::super::sync_limits(&l, &next).await.expect("sync"), (2, 1));
        let now: Vec<(String, Limit)> = l.limits().await.expect("limits");
        assert_eq!(now, vec![("b".to_string(), cap(5)), ("c".to_string(), cap(3))]);
        // An invalid definition (no rate, no cap) changes nothing.
        let bad: BTreeMap<String, Limit> = [("d".to_string(), Limit::default())].into();
        let err = super::super::sync_limits(&l, &bad).await.expect_err("bad limit");
        assert_eq!(err.kind(), crate::ErrorKind::InvalidConfig);
        assert_eq!(l.limits().await.expect("limits").len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_refills_at_the_rate() {
        let l = LocalLimiter::new();
        l.set_limit(
            "k",
            Limit::builder()
                .rate_per_second(10.0)
                .burst(2)
                .build()
                .expect("limit"),
        )
        .await
        .expect("set");
        let hold = Duration::from_secs(60);
        assert!(granted(&l.acquire("k", hold).await.expect("a")));
        assert!(granted(&l.acquire("k", hold).await.expect("a")));
        match l.acquire("k", hold).await.expect("a") {
            Admission::Deferred { retry_in, exceeded } => {
                assert_eq!(exceeded, Exceeded::Rate);
                assert_eq!(retry_in, Duration::from_millis(100));
            }
            other => panic!("expected a deferral, got {other:?}"),
        }
        // Over 10 s of virtual time exactly 100 more starts are allowed.
        let mut granted_n = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            if granted(&l.acquire("k", hold).await.expect("a")) {
                granted_n += 1;
            }
        }
        assert_eq!(granted_n, 100);
        assert!(granted(&l.acquire("other", hold).await.expect("unlimited key")));
        let s = l.stats();
        assert_eq!(s.iter().find(|s| s.key == "k").map(|s| s.granted), Some(102));
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_cap_and_expiry_of_held_permits() {
        let l = LocalLimiter::new();
        l.set_limit("k", Limit::builder().max_in_flight(2).build().expect("limit"))
            .await
            .expect("set");
        let hold = Duration::from_secs(5);
        let Admission::Granted(p1) = l.acquire("k", hold).await.expect("a") else {
            panic!("first")
        };
        assert!(granted(&l.acquire("k", hold).await.expect("a")));
        assert!(matches!(
            l.acquire("k", hold).await.expect("a"),
            Admission::Deferred {
                exceeded: Exceeded::InFlight,
                ..
            }
        ));
        l.release(&p1).await.expect("release");
        assert!(granted(&l.acquire("k", hold).await.expect("a")));
        assert!(!granted(&l.acquire("k", hold).await.expect("a")));
        // Permits of a worker that died count only until their hold ends.
        tokio::time::advance(hold).await;
        assert!(granted(&l.acquire("k", hold).await.expect("a")));
        // Changed at run time: a higher cap applies at once.
        l.set_limit("k", Limit::builder().max_in_flight(3).build().expect("limit"))
            .await
            .expect("set");
        assert!(granted(&l.acquire("k", hold).await.expect("a")));
        l.remove_limit("k").await.expect("remove");
        assert!(granted(&l.acquire("k", hold).await.expect("a")));
    }

    #[tokio::test]
    async fn bad_definitions_are_typed_errors() {
        let l = LocalLimiter::new();
        for b in [
            Limit::builder().rate_per_second(0.0),
            Limit::builder().rate_per_second(-1.0),
            Limit::builder().rate_per_second(f64::NAN),
            Limit::builder().rate_per_second(1.0).burst(0),
            Limit::builder().max_in_flight(0),
            Limit::builder().burst(3),
            Limit::builder(),
        ] {
            let e = b.build().expect_err("invalid");
            assert_eq!(e.kind(), crate::ErrorKind::InvalidConfig);
        }
        let ok = Limit::builder().max_in_flight(1).build().expect("ok");
        let e = l.set_limit("bad key", ok.clone()).await.expect_err("bad key");
        assert_eq!(e.kind(), crate::ErrorKind::InvalidConfig);
        let e = l.set_limit("k", Limit::default()).await.expect_err("empty limit");
        assert_eq!(e.kind(), crate::ErrorKind::InvalidConfig);
    }
}
