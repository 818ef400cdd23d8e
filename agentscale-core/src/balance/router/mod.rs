//! A live router over a set of endpoints, picking with any [`Policy`].

use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::time::Instant;

use super::{EndpointLoad, LeastLoadedOfD, PeakEwma, Policy};
use crate::{Error, Result};

/// The largest weight an endpoint may have.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Weights are scaled internally so slow-start can ramp a weight-1 endpoint
/// in steps finer than 1. Ratios (what policies look at) are unchanged.
const WEIGHT_SCALE: u64 = 100;
/// A re-admitted endpoint starts at this fraction of its weight.
const SLOW_START_FLOOR: f64 = 0.1;

#[derive(Debug, Clone, Copy)]
struct Settings {
    eject_after: u32,
    cooldown: Duration,
    slow_start: Duration,
    decay: Duration,
    failure_penalty: Duration,
}

struct Endpoint<T> {
    id: String,
    value: T,
    weight: AtomicU32,
    in_flight: AtomicU32,
    queue_depth: AtomicU32,
    /// The published peak-EWMA estimate (ns), read lock-free by `pick`.
    ewma_ns: AtomicU64,
    /// End of the last ejection, ns since the router's epoch (at least 1);
    /// zero if never ejected. Healthy iff `now >= ejected_until`; slow start runs
    /// from this instant.
    ejected_until: AtomicU64,
    health: Mutex<Health>,
}

#[derive(Debug)]
struct Health {
    ewma: PeakEwma,
    consecutive_failures: u32,
}

struct Picker {
    policy: Box<dyn Policy>,
    snapshot: Vec<EndpointLoad>,
}

struct Shared {
    settings: Settings,
    epoch: Instant,
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

struct Inner<T> {
    endpoints: RwLock<Vec<Arc<Endpoint<T>>>>,
    picker: Mutex<Picker>,
    shared: Arc<Shared>,
}

/// Routes requests over a set of endpoints (inference replicas, agent
/// replicas) with a [`Policy`], tracking what the policy needs.
///
/// * **In flight:** [`Router::pick`] returns a [`PickGuard`] that counts the
///   request as in flight until dropped.
/// * **Latency:** [`PickGuard::success`] feeds a [`PeakEwma`] per endpoint;
///   [`PickGuard::failure`] charges a failure penalty, so an endpoint that
///   fails fast does not look fast.
/// * **Queue depth:** replicas report it with [`Router::report_queue_depth`]
///   (or you read it from the queue backend and report it).
/// * **Ejection:** after `K` consecutive failures an endpoint is ejected for a
///   cool-down; then it is re-admitted with slow start: its weight ramps from
///   10 % to 100 % over the slow-start period (weight-aware policies —
///   [`LeastLoadedOfD`], [`PeakEwmaP2c`](super::PeakEwmaP2c),
///   [`PowerOfTwoChoices`](super::PowerOfTwoChoices),
///   [`WeightedRoundRobin`](super::WeightedRoundRobin) — honour the ramp).
///
/// `Router` is cheap to clone (an `Arc`), `Send + Sync`, and usable from many
/// tasks at once: `pick` takes one short mutex around the policy; guards
/// update atomics and a per-endpoint mutex.
///
/// ```
/// use agentscale_core::balance::{PeakEwmaP2c, Router};
/// use std::time::Duration;
///
/// # fn main() -> agentscale_core::Result<()> {
/// let router = Router::builder()
///     .policy(PeakEwmaP2c::with_seed(1))
///     .endpoint("gpu-0", "http://10.0.0.1:8001", 3)
///     .endpoint("cpu-0", "http://10.0.0.2:8001", 1)
///     .build()?;
/// let guard = router.pick()?;
/// let _url: &&str = guard.value();
/// guard.success(Duration::from_millis(12));
/// # Ok(()) }
/// ```
pub struct Router<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Router<T> {
    fn clone(&self) -> Self {
        Router {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> fmt::Debug for Router<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let endpoints = self.inner.endpoints.read();
        f.debug_struct("Router")
            .field("policy", &self.inner.picker.lock().policy.name())
            .field(
                "endpoints",
                &endpoints.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            )
            .field("settings", &self.inner.shared.settings)
            .finish()
    }
}

/// The state of one endpoint, as returned by [`Router::endpoints`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The endpoint's id.
    pub id: String,
    /// Its configured weight.
    pub weight: u32,
    /// Requests in flight through this router.
    pub in_flight: u32,
    /// Last reported queue depth.
    pub queue_depth: u32,
    /// Peak-EWMA latency estimate (zero: no sample yet).
    pub ewma_latency: Duration,
    /// Whether the endpoint is currently ejected.
    pub ejected: bool,
    /// Consecutive failures since the last success or ejection.
    pub consecutive_failures: u32,
}

/// Builds a [`Router`]; see [`Router::builder`].
pub struct RouterBuilder<T> {
    policy: Option<Box<dyn Policy>>,
    endpoints: Vec<(String, T, u32)>,
    settings: Settings,
    allow_empty: bool,
}

impl<T> fmt::Debug for RouterBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterBuilder")
            .field("policy", &self.policy.as_ref().map(|p| p.name()))
            .field(
                "endpoints",
                &self.endpoints.iter().map(|e| (&e.0, e.2)).collect::<Vec<_>>(),
            )
            .field("settings", &self.settings)
            .finish()
    }
}

impl<T: Send + Sync + 'static> RouterBuilder<T> {
    /// The policy (default: [`LeastLoadedOfD::default`]).
    pub fn policy(mut self, policy: impl Policy + 'static) -> Self {
        self.policy = Some(Box::new(policy));
        self
    }

    /// The policy, already boxed (chosen at run time).
    pub fn boxed_policy(mut self, policy: Box<dyn Policy>) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Adds an endpoint with a unique `id`, the `value` a guard hands out (a
    /// client, a URL) and a relative `weight` (1..=[`MAX_WEIGHT`]).
    pub fn endpoint(mut self, id: impl Into<String>, value: T, weight: u32) -> Self {
        self.endpoints.push((id.into(), value, weight));
        self
    }

    /// Ejects an endpoint after `consecutive_failures` failures in a row for
    /// `cooldown` (default 5 failures, 10 s). Zero failures disables ejection.
    pub fn eject_after(mut self, consecutive_failures: u32, cooldown: Duration) -> Self {
        self.settings.eject_after = consecutive_failures;
        self.settings.cooldown = cooldown;
        self
    }

    /// How long a re-admitted endpoint takes to ramp from 10 % to its full
    /// weight (default 30 s; zero disables slow start).
    pub fn slow_start(mut self, period: Duration) -> Self {
        self.settings.slow_start = period;
        self
    }

    /// The peak-EWMA decay time constant (default 10 s).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.settings.decay = decay;
        self
    }

    /// The minimum latency charged for a failure (default 1 s).
    pub fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.settings.failure_penalty = penalty;
        self
    }

    /// Allows building a router with no endpoints yet (added later with
    /// [`Router::add_endpoint`]); `pick` returns `Error::Unavailable` until
    /// then.
    pub fn allow_empty(mut self) -> Self {
        self.allow_empty = true;
        self
    }

    /// Validates and builds the router.
    ///
    /// Errors with [`Error::InvalidConfig`] on no endpoints (unless
    /// [`allow_empty`](Self::allow_empty)), a duplicate id, an empty id, a
    /// weight of zero or above [`MAX_WEIGHT`], or a zero decay.
    pub fn build(self) -> Result<Router<T>> {
        if self.endpoints.is_empty() && !self.allow_empty {
            return Err(Error::InvalidConfig("router: no endpoints".into()));
        }
        if self.settings.decay.is_zero() {
            return Err(Error::InvalidConfig("router: decay must be positive".into()));
        }
        let shared = Arc::new(Shared {
            settings: self.settings,
            epoch: Instant::now(),
        });
        let mut endpoints: Vec<Arc<Endpoint<T>>> = Vec::with_capacity(self.endpoints.len());
        for (id, value, weight) in self.endpoints {
            validate(&id, weight).map_err(Error::InvalidConfig)?;
            if endpoints.iter().any(|e| e.id == id) {
                return Err(Error::InvalidConfig(format!(
                    "router: duplicate endpoint id {id:?}"
                )));
            }
            endpoints.push(Arc::new(Endpoint::new(id, value, weight, &shared.settings)));
        }
        let n = endpoints.len();
        Ok(Router {
            inner: Arc::new(Inner {
                endpoints: RwLock::new(endpoints),
                picker: Mutex::new(Picker {
                    policy: self.policy.unwrap_or_else(|| Box::new(LeastLoadedOfD::default())),
                    snapshot: Vec::with_capacity(n),
                }),
                shared,
            }),
        })
    }
}

fn validate(id: &str, weight: u32) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("router: empty endpoint id".into());
    }
    if weight == 0 || weight > MAX_WEIGHT {
        return Err(format!(
            "router: endpoint {id:?} weight {weight} is not in 1..={MAX_WEIGHT}"
        ));
    }
    Ok(())
}

impl<T> Endpoint<T> {
    fn new(id: String, value: T, weight: u32, settings: &Settings) -> Self {
        Endpoint {
            id,
            value,
            weight: AtomicU32::new(weight),
            in_flight: AtomicU32::new(0),
            queue_depth: AtomicU32::new(0),
            ewma_ns: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            health: Mutex::new(Health {
                ewma: fresh_ewma(settings),
                consecutive_failures: 0,
            }),
        }
    }

    fn load(&self, now_ns: u64, settings: &Settings) -> EndpointLoad {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let healthy = now_ns >= until;
        let mut weight = u64::from(self.weight.load(Ordering::Relaxed)) * WEIGHT_SCALE;
        if until != 0 && healthy && !settings.slow_start.is_zero() {
            let since = now_ns - until;
            let period = settings.slow_start.as_nanos() as u64;
            if since < period {
                let frac = (since as f64 / period as f64).max(SLOW_START_FLOOR);
                weight = ((weight as f64 * frac) as u64).max(1);
            }
        }
        EndpointLoad {
            in_flight: self.in_flight.load(Ordering::Relaxed),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            ewma_latency: Duration::from_nanos(self.ewma_ns.load(Ordering::Relaxed)),
            weight: weight.min(u64::from(u32::MAX)) as u32,
            healthy,
        }
    }
}

fn fresh_ewma(settings: &Settings) -> PeakEwma {
    PeakEwma::new(settings.decay).with_failure_penalty(settings.failure_penalty)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

impl<T: Send + Sync + 'static> Router<T> {
    /// A builder with the default policy ([`LeastLoadedOfD`]), ejection after 5
    /// consecutive failures for 10 s, 30 s slow start, 10 s EWMA decay and a
    /// 1 s failure penalty.
    pub fn builder() -> RouterBuilder<T> {
        RouterBuilder {
            policy: None,
            endpoints: Vec::new(),
            settings: Settings {
                eject_after: 5,
                cooldown: Duration::from_secs(10),
                slow_start: Duration::from_secs(30),
                decay: PeakEwma::DEFAULT_DECAY,
                failure_penalty: PeakEwma::DEFAULT_FAILURE_PENALTY,
            },
            allow_empty: false,
        }
    }

    /// Picks an endpoint and counts a request in flight to it until the
    /// returned guard is dropped.
    ///
    /// Errors with [`Error::Unavailable`] when there are no endpoints or all
    /// are ejected. Never blocks beyond two short locks.
    pub fn pick(&self) -> Result<PickGuard<T>> {
        let shared = &self.inner.shared;
        let endpoints = self.inner.endpoints.read();
        if endpoints.is_empty() {
            return Err(Error::Unavailable {
                message: "router: no endpoints".into(),
                source: None,
            });
        }
        let now_ns = nanos(shared.now());
        let chosen = {
            let mut picker = self.inner.picker.lock();
            let Picker { policy, snapshot } = &mut *picker;
            snapshot.clear();
            snapshot.extend(endpoints.iter().map(|e| e.load(now_ns, &shared.settings)));
            policy.pick(snapshot)
        };
        let Some(i) = chosen else {
            return Err(Error::Unavailable {
                message: format!("router: all {} endpoints are ejected", endpoints.len()),
                source: None,
            });
        };
        let endpoint = endpoints.get(i).cloned().ok_or_else(|| Error::Backend {
            message: format!("router: policy returned index {i} out of {}", endpoints.len()),
            source: None,
        })?;
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(PickGuard {
            endpoint,
            shared: Arc::clone(shared),
            started: Instant::now(),
            finished: false,
        })
    }

    /// Records the queue depth an endpoint reported (or that was read from its
    /// queue backend). Errors with [`Error::NotFound`] for an unknown id.
    pub fn report_queue_depth(&self, id: &str, depth: u32) -> Result<()> {
        self.with_endpoint(id, |e| e.queue_depth.store(depth, Ordering::Relaxed))
    }

    /// Changes an endpoint's weight (a canary ramp, a resized replica).
    /// Errors with [`Error::InvalidConfig`] on a weight outside
    /// 1..=[`MAX_WEIGHT`], [`Error::NotFound`] for an unknown id.
    pub fn set_weight(&self, id: &str, weight: u32) -> Result<()> {
        validate(id, weight).map_err(Error::InvalidConfig)?;
        self.with_endpoint(id, |e| e.weight.store(weight, Ordering::Relaxed))
    }

    /// Adds an endpoint at run time. Errors with [`Error::Conflict`] if the id
    /// exists, [`Error::InvalidConfig`] on a bad id or weight.
    pub fn add_endpoint(&self, id: impl Into<String>, value: T, weight: u32) -> Result<()> {
        let id = id.into();
        validate(&id, weight).map_err(Error::InvalidConfig)?;
        let endpoint = Arc::new(Endpoint::new(id, value, weight, &self.inner.shared.settings));
        let mut endpoints = self.inner.endpoints.write();
        if endpoints.iter().any(|e| e.id == endpoint.id) {
            return Err(Error::Conflict(format!(
                "router: endpoint {:?} already exists",
                endpoint.id
            )));
        }
        endpoints.push(endpoint);
        Ok(())
    }

    /// Removes an endpoint at run time; guards already handed out stay valid.
    /// Errors with [`Error::NotFound`] for an unknown id.
    pub fn remove_endpoint(&self, id: &str) -> Result<()> {
        let mut endpoints = self.inner.endpoints.write();
        let before = endpoints.len();
        endpoints.retain(|e| e.id != id);
        if endpoints.len() == before {
            return Err(Error::NotFound(format!("router: endpoint {id:?}")));
        }
        Ok(())
    }

    /// A snapshot of every endpoint's state.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        let now_ns = nanos(self.inner.shared.now());
        self.inner
            .endpoints
            .read()
            .iter()
            .map(|e| EndpointStatus {
                id: e.id.clone(),
                weight: e.weight.load(Ordering::Relaxed),
                in_flight: e.in_flight.load(Ordering::Relaxed),
                queue_depth: e.queue_depth.load(Ordering::Relaxed),
                ewma_latency: Duration::from_nanos(e.ewma_ns.load(Ordering::Relaxed)),
                ejected: now_ns < e.ejected_until.load(Ordering::Relaxed),
                consecutive_failures: e.health.lock().consecutive_failures,
            })
            .collect()
    }

    /// The number of endpoints (ejected ones included).
    pub fn len(&self) -> usize {
        self.inner.endpoints.read().len()
    }

    /// Whether the router has no endpoints.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The policy's name.
    pub fn policy_name(&self) -> &'static str {
        self.inner.picker.lock().policy.name()
    }

    fn with_endpoint(&self, id: &str, f: impl FnOnce(&Endpoint<T>)) -> Result<()> {
        let endpoints = self.inner.endpoints.read();
        let e = endpoints
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| Error::NotFound(format!("router: endpoint {id:?}")))?;
        f(e);
        Ok(())
    }
}

/// A request in flight to the endpoint [`Router::pick`] chose.
///
/// Report the outcome with [`success`](Self::success) /
/// [`success_elapsed`](Self::success_elapsed) or [`failure`](Self::failure).
/// Dropping the guard without either counts as cancelled: the request leaves
/// the in-flight count and nothing is recorded.
pub struct PickGuard<T> {
    endpoint: Arc<Endpoint<T>>,
    shared: Arc<Shared>,
    started: Instant,
    finished: bool,
}

impl<T> fmt::Debug for PickGuard<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickGuard")
            .field("endpoint", &self.endpoint.id)
            .field("elapsed", &self.started.elapsed())
            .finish()
    }
}

impl<T> PickGuard<T> {
    /// The chosen endpoint's value.
    pub fn value(&self) -> &T {
        &self.endpoint.value
    }

    /// The chosen endpoint's id.
    pub fn id(&self) -> &str {
        &self.endpoint.id
    }

    /// Time since the pick.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Records a success that took `latency` (feeds the latency estimate and
    /// resets the consecutive-failure count).
    pub fn success(mut self, latency: Duration) {
        self.finished = true;
        let now = self.shared.now();
        let mut h = self.endpoint.health.lock();
        h.consecutive_failures = 0;
        h.ewma.observe(now, latency);
        self.endpoint
            .ewma_ns
            .store(nanos(h.ewma.estimate()), Ordering::Relaxed);
    }

    /// Records a success whose latency is the time since the pick.
    pub fn success_elapsed(self) {
        let latency = self.elapsed();
        self.success(latency);
    }

    /// Records a failure: charges the failure penalty to the latency estimate
    /// and, after the configured number of consecutive failures, ejects the
    /// endpoint for the cool-down.
    pub fn failure(mut self) {
        self.finished = true;
        let now = self.shared.now();
        let latency = self.started.elapsed();
        let settings = &self.shared.settings;
        let mut h = self.endpoint.health.lock();
        h.consecutive_failures += 1;
        if settings.eject_after > 0 && h.consecutive_failures >= settings.eject_after {
            let until = nanos(now).saturating_add(nanos(settings.cooldown)).max(1);
            self.endpoint.ejected_until.store(until, Ordering::Relaxed);
            h.consecutive_failures = 0;
            // Re-admitted endpoints start unknown; slow start limits the risk.
            h.ewma = fresh_ewma(settings);
            self.endpoint.ewma_ns.store(0, Ordering::Relaxed);
            tracing::warn!(
                endpoint = %self.endpoint.id,
                failures = settings.eject_after,
                cooldown_ms = settings.cooldown.as_millis() as u64,
                "ejecting endpoint after consecutive failures"
            );
        } else {
            h.ewma.observe_failure(now, latency);
            self.endpoint
                .ewma_ns
                .store(nanos(h.ewma.estimate()), Ordering::Relaxed);
        }
    }
}

impl<T> Drop for PickGuard<T> {
    fn drop(&mut self) {
        let _ = self.finished;
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
