//! Rate limits and concurrency caps by key (tenant, model, tool).
//!
//! A [`Limit`] is a token-bucket rate (`rate_per_second`, refilled
//! continuously, holding at most `burst` tokens) and a cap on tasks running
//! at once (`max_in_flight`). A [`Limiter`] holds the limits by key and
//! answers [`acquire`](Limiter::acquire): a [`Permit`] to run now, or how
//! long to wait. Limits are set, changed and removed at run time; a key
//! without a limit is never held back.
//!
//! [`LocalLimiter`] keeps everything in process (one worker process, or the
//! in-memory queue); the Redis limiter (`agentscale_queue::redis::RedisLimiter`)
//! shares limits, buckets and in-flight counts across the whole fleet with
//! one atomic script per decision.
//!
//! The worker applies limiters before a handler runs
//! ([`WorkerBuilder::limiter`](crate::worker::WorkerBuilder::limiter)): a
//! task over a limit is handed back with [`Nack::Defer`](crate::Nack::Defer),
//! uncharged, and runs later.

use std::collections::HashMap;
use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::validate_identifier;
use crate::error::{Error, Result};

/// A limit on one key: a token-bucket rate and/or a cap on tasks in flight.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Limit {
    /// Task starts per second, refilled continuously (none: no rate limit).
    pub rate_per_second: Option<f64>,
    /// Most tokens the bucket holds: starts allowed at once after a quiet
    /// spell (default: the rate rounded up, at least 1).
    pub burst: Option<u32>,
    /// Most tasks of the key running at once, fleet-wide for a shared
    /// limiter (none: no cap).
    pub max_in_flight: Option<u32>,
}

impl Limit {
    /// A builder with no rate and no cap.
    pub fn builder() -> LimitBuilder {
        LimitBuilder {
            limit: Limit::default(),
        }
    }

    /// Checks the values: a rate must be finite and above zero, a burst and
    /// a cap at least 1, and at least one of rate and cap must be set.
    /// [`Error::InvalidConfig`] otherwise.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidConfig(m));
        if let Some(r) = self.rate_per_second {
            if !r.is_finite() || r <= 0.0 {
                return bad(format!("limit: rate_per_second must be above zero, got {r}"));
            }
        }
        if self.burst == Some(0) {
            return bad("limit: burst must be at least 1".into());
        }
        if self.burst.is_some() && self.rate_per_second.is_none() {
            return bad("limit: burst needs rate_per_second".into());
        }
        if self.max_in_flight == Some(0) {
            return bad("limit: max_in_flight must be at least 1".into());
        }
        if self.rate_per_second.is_none() && self.max_in_flight.is_none() {
            return bad("limit: set rate_per_second, max_in_flight or both".into());
        }
        Ok(())
    }

    /// The bucket size in force: `burst`, or the rate rounded up (at least 1).
    pub fn effective_burst(&self) -> f64 {
        match (self.burst, self.rate_per_second) {
            (Some(b), _) => f64::from(b),
            (None, Some(r)) => r.ceil().max(1.0),
            (None, None) => 1.0,
        }
    }
}

/// Builder of [`Limit`]; validates at [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct LimitBuilder {
    limit: Limit,
}

impl LimitBuilder {
    /// Task starts per second.
    pub fn rate_per_second(mut self, r: f64) -> Self {
        self.limit.rate_per_second = Some(r);
        self
    }
    /// Bucket size.
    pub fn burst(mut self, n: u32) -> Self {
        self.limit.burst = Some(n);
        self
    }
    /// Most tasks running at once.
    pub fn max_in_flight(mut self, n: u32) -> Self {
        self.limit.max_in_flight = Some(n);
        self
    }
    /// Validates and returns the limit.
    pub fn build(self) -> Result<Limit> {
        self.limit.validate()?;
        Ok(self.limit)
    }
}

/// Which limit deferred a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// The token bucket was empty.
    Rate,
    /// `max_in_flight` tasks were running.
    InFlight,
}

/// The answer of [`Limiter::acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Run now; give the permit back with [`Limiter::release`] when done.
    Granted(Permit),
    /// Over the limit: try again after this long.
    Deferred {
        /// Suggested wait (the time until a token is due, or a short pause
        /// for an in-flight slot).
        retry_in: Duration,
        /// Which limit.
        exceeded: Exceeded,
    },
}

/// A granted slot. Holding it counts against `max_in_flight` until it is
/// released, or until the `hold` given to `acquire` runs out (so a worker
/// that died does not hold a slot for ever).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit {
    key: String,
    /// The in-flight entry to remove, when the key has a cap.
    id: Option<String>,
}

impl Permit {
    /// A permit for `key`; `id` names its in-flight entry (none: nothing to
    /// release). For limiter implementations.
    pub fn new(key: impl Into<String>, id: Option<String>) -> Self {
        Permit { key: key.into(), id }
    }

    /// The limited key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The in-flight entry, if any.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }
}

/// Decisions of one limiter for one key, counted in this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyStats {
    /// The key.
    pub key: String,
    /// Permits granted.
    pub granted: u64,
    /// Deferrals because the bucket was empty.
    pub deferred_rate: u64,
    /// Deferrals because the in-flight cap was reached.
    pub deferred_in_flight: u64,
}

/// Per-key decision counters, shared by limiter implementations.
#[derive(Debug, Default)]
pub struct KeyCounters {
    by_key: Mutex<HashMap<String, KeyStats>>,
}

impl KeyCounters {
    /// Counts one decision for `key`.
    pub fn record(&self, key: &str, admission: &Admission) {
        let mut m = self.by_key.lock();
        let s = m.entry(key.to_string()).or_insert_with(|| KeyStats {
            key: key.to_string(),
            ..KeyStats::default()
        });
        match admission {
            Admission::Granted(_) => s.granted += 1,
            Admission::Deferred {
                exceeded: Exceeded::Rate,
                ..
            } => s.deferred_rate += 1,
            Admission::Deferred {
                exceeded: Exceeded::InFlight,
                ..
            } => s.deferred_in_flight += 1,
        }
    }

    /// The counters, sorted by key.
    pub fn snapshot(&self) -> Vec<KeyStats> {
        let mut v: Vec<KeyStats> = self.by_key.lock().values().cloned().collect();
        v.sort_by(|a, b| a.key.cmp(&b.key));
        v
    }
}

/// Holds limits by key and decides whether a task may start.
/// Object-safe: use it as `Arc<dyn Limiter>`.
#[async_trait]
pub trait Limiter: Send + Sync + Debug {
    /// Sets (or replaces) the limit of `key`; takes effect at the next
    /// decision. `key` must be an identifier and `limit` valid.
    async fn set_limit(&self, key: &str, limit: Limit) -> Result<()>;

    /// Removes the limit of `key`: its tasks are no longer held back.
    async fn remove_limit(&self, key: &str) -> Result<()>;

    /// Every limit, sorted by key.
    async fn limits(&self) -> Result<Vec<(String, Limit)>>;

    /// Takes a token and an in-flight slot of `key`, or says how long to
    /// wait. `hold` is the longest the permit is counted if never released.
    async fn acquire(&self, key: &str, hold: Duration) -> Result<Admission>;

    /// Gives an in-flight slot back.
    async fn release(&self, permit: &Permit) -> Result<()>;

    /// Decisions per key made by this process.
    fn stats(&self) -> Vec<KeyStats>;
}

/// Compile-time check that the trait stays object-safe.
#[allow(dead_code)]
fn _object_safe(_: Box<dyn Limiter>) {}

/// Validates a key and a limit, for `set_limit` implementations.
pub fn check_definition(key: &str, limit: &Limit) -> Result<()> {
    validate_identifier("limit key", key).map_err(|e| Error::InvalidConfig(e.to_string()))?;
    limit.validate()
}

/// Makes `limiter` hold exactly `limits`, for a reloaded config: every
/// definition is checked first (an invalid one changes nothing and is
/// [`Error::InvalidConfig`]); then each limit is set (a changed one takes
/// effect at the next decision, counters kept) and the keys no longer
/// listed are removed. Returns how many keys were set and removed.
pub async fn sync_limits(
    limiter: &dyn Limiter,
    limits: &std::collections::BTreeMap<String, Limit>,
) -> Result<(usize, usize)> {
    for (key, limit) in limits {
        check_definition(key, limit)?;
    }
    let mut removed = 0;
    for (key, _) in limiter.limits().await? {
        if !limits.contains_key(&key) {
            limiter.remove_limit(&key).await?;
            removed += 1;
        }
    }
    for (key, limit) in limits {
        limiter.set_limit(key, limit.clone()).await?;
    }
    Ok((limits.len(), removed))
}

/// How long a task waits for an in-flight slot before it is tried again.
pub const IN_FLIGHT_RETRY: Duration = Duration::from_millis(200);

mod local;

pub use local::LocalLimiter;
