//! Prometheus metrics and the health/metrics HTTP exporter: the autoscaling
//! surface of a worker fleet.
//!
//! A [`Metrics`] value is a registry holding agentscale's metric families.
//! Hand a clone to every [`Worker`](crate::worker::Worker) of the process
//! (`.metrics(m.clone())`) and serve it with [`Exporter::bind`]:
//!
//! | path | answers |
//! |---|---|
//! | `/metrics` | Prometheus / OpenMetrics text |
//! | `/healthz` | `200` while the process serves HTTP (liveness probe) |
//! | `/readyz` | `200` once a worker (or a [`QueueKeeper`](crate::keeper::QueueKeeper)) runs and the last queue-depth poll succeeded; `503` before, while draining and after shutdown (readiness probe) |
//!
//! # Metrics
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `agentscale_task_queue_due` | gauge | `queue` | ready + in-flight + delayed tasks already due ([`Depth::due`]): **scale on this** |
//! | `agentscale_task_queue_depth` | gauge | `queue` | ready + in-flight ([`Depth::backlog`]) |
//! | `agentscale_task_queue_ready` | gauge | `queue` | deliverable now |
//! | `agentscale_task_queue_in_flight` | gauge | `queue` | leased, not yet acked |
//! | `agentscale_task_queue_delayed` | gauge | `queue` | waiting for a retry delay or `not_before` (due or not) |
//! | `agentscale_task_queue_delayed_due` | gauge | `queue` | the delayed tasks whose due time has passed |
//! | `agentscale_task_queue_dead` | gauge | `queue` | in the dead-letter store |
//! | `agentscale_task_queue_oldest_age_seconds` | gauge | `queue` | age of the oldest ready task (0 when unknown or empty) |
//! | `agentscale_worker_slots` | gauge | `state="busy"\|"total"` | handler slots of this process |
//! | `agentscale_tasks_total` | counter | `outcome` | `completed`, `retried`, `dead_lettered`, `released`, `lease_lost`, `panicked`, `timed_out` |
//! | `agentscale_task_duration_seconds` | histogram | | handler run time of every attempt |
//! | `agentscale_tool_cache_total` | counter | `outcome="hit"\|"miss"\|"coalesced"` | typed tool calls by how they were answered |
//! | `agentscale_tasks_promoted_total` | counter | | due delayed tasks a [`QueueKeeper`](crate::keeper::QueueKeeper) moved to ready |
//! | `agentscale_limit_decisions_total` | counter | `key`, `decision="granted"\|"deferred_rate"\|"deferred_in_flight"` | a worker's limiter decisions per limit key (at most [`MAX_LIMIT_KEYS`] keys, the rest as `key="_other"`) |
//!
//! `panicked` and `timed_out` count failed attempts by cause; each such attempt
//! is also counted once as `retried` or `dead_lettered`.
//!
//! The queue gauges are refreshed by a sampler each worker runs (every
//! [`WorkerBuilder::depth_poll_interval`](crate::worker::WorkerBuilder::depth_poll_interval)),
//! so every replica exports the same, queue-wide numbers. With no worker
//! running (a fleet scaled to zero) a [`QueueKeeper`](crate::keeper::QueueKeeper)
//! exports them, and promotes due retries, so the autoscaler still sees the
//! work.
//!
//! # Autoscaling on the queue depth
//!
//! Scale on `agentscale_task_queue_due`: it counts what is runnable now,
//! including retries whose backoff ended while no worker ran. Delayed tasks
//! not yet due are not counted (they need no worker yet). Because the number
//! is queue-wide, scale on its **maximum** (or average) across replicas and
//! the keeper, never on the sum.
//!
//! **Kubernetes HPA (External metric)**, with prometheus-adapter exposing
//! `agentscale_task_queue_due` as an external metric:
//!
//! ```yaml
//! metrics:
//! - type: External
//!   external:
//!     metric:
//!       name: agentscale_task_queue_due
//!       selector: { matchLabels: { queue: agent-tasks } }
//!     target:
//!       type: AverageValue
//!       averageValue: "32"   # backlog per replica ≈ its worker concurrency
//! ```
//!
//! **KEDA `prometheus` scaler**:
//!
//! ```yaml
//! triggers:
//! - type: prometheus
//!   metadata:
//!     serverAddress: http://prometheus.monitoring:9090
//!     query: max(agentscale_task_queue_due{queue="agent-tasks"})
//!     threshold: "32"
//!     activationThreshold: "0"   # wake from zero on the first due task (a queue keeper must run)
//! ```
//!
//! Point the liveness probe at `/healthz` and the readiness probe at
//! `/readyz`. Workers pull, so readiness gates no traffic; it shows rollouts
//! and dashboards which replicas are working, which are draining, and which
//! cannot reach their queue.

#[cfg(feature = "exporter")]
mod exporter;
#[cfg(feature = "prometheus")]
mod prometheus;

#[cfg(feature = "exporter")]
#[cfg_attr(docsrs, doc(cfg(feature = "exporter")))]
pub use exporter::{Exporter, ExporterHandle};
/// The `prometheus-client` crate at the version [`Metrics::with_registry`]
/// takes, so a service registers its own metrics without guessing a version.
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub use prometheus_client;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::queue::Depth;

/// The outcome of a task attempt, as counted in `agentscale_tasks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded and the ack went through.
    Completed,
    /// The attempt failed and the task was nacked for a later retry.
    Retried,
    /// The task was moved to the dead-letter store.
    DeadLettered,
    /// The task was handed back uncharged at shutdown.
    Released,
    /// The lease was lost (ack refused or heartbeat refused).
    LeaseLost,
    /// The handler panicked (also counted as retried or dead-lettered).
    Panicked,
    /// The handler hit the task timeout (also counted as retried or dead-lettered).
    TimedOut,
    /// A rate limit or concurrency cap deferred the task (handed back
    /// uncharged, to run later).
    Deferred,
}

impl Outcome {
    /// All outcomes.
    pub const ALL: [Outcome; 8] = [
        Outcome::Completed,
        Outcome::Retried,
        Outcome::DeadLettered,
        Outcome::Released,
        Outcome::LeaseLost,
        Outcome::Panicked,
        Outcome::TimedOut,
        Outcome::Deferred,
    ];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Retried => "retried",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Released => "released",
            Outcome::LeaseLost => "lease_lost",
            Outcome::Panicked => "panicked",
            Outcome::TimedOut => "timed_out",
            Outcome::Deferred => "deferred",
        }
    }

    fn index(self) -> usize {
        match self {
            Outcome::Completed => 0,
            Outcome::Retried => 1,
            Outcome::DeadLettered => 2,
            Outcome::Released => 3,
            Outcome::LeaseLost => 4,
            Outcome::Panicked => 5,
            Outcome::TimedOut => 6,
            Outcome::Deferred => 7,
        }
    }
}

fn tool_cache_index(outcome: crate::typed::CacheOutcome) -> usize {
    use crate::typed::CacheOutcome;
    match outcome {
        CacheOutcome::Hit => 0,
        CacheOutcome::Miss => 1,
        _ => 2,
    }
}

/// Upper bounds (seconds) of the `agentscale_task_duration_seconds` buckets:
/// 0.25 ms doubling 18 times (to about 33 s); a `+Inf` bucket follows.
const DURATION_BUCKETS: usize = 18;

fn duration_bound(i: usize) -> f64 {
    0.000_25 * f64::from(1u32 << i)
}

/// The values behind every metric family. Plain atomics, so recording costs
/// the same with or without the `prometheus` feature; the feature only adds
/// encoding (a `prometheus-client` collector reads these at scrape time).
#[derive(Debug, Default)]
struct Values {
    queues: Mutex<BTreeMap<String, Depth>>,
    slots_busy: AtomicI64,
    slots_total: AtomicI64,
    outcomes: [AtomicU64; 8],
    /// Cumulative counts are computed at encode time; these are per bucket
    /// (the last one is `+Inf`).
    duration_buckets: [AtomicU64; DURATION_BUCKETS + 1],
    duration_sum_ns: AtomicU64,
    duration_count: AtomicU64,
    running_workers: AtomicI64,
    draining: AtomicBool,
    depth_ok: AtomicBool,
    depth_polls: AtomicU64,
    tool_cache: [AtomicU64; 3],
    promoted: AtomicU64,
    /// Limiter decisions per key: granted, deferred (rate), deferred
    /// (in-flight cap). At most [`MAX_LIMIT_KEYS`] keys; later ones are
    /// counted under [`OTHER_LIMIT_KEY`].
    limits: Mutex<BTreeMap<String, [u64; 3]>>,
}

/// The most limit keys exported one by one; decisions on further keys are
/// summed under [`OTHER_LIMIT_KEY`] so a per-tenant key cannot grow the
/// metrics without bound.
pub const MAX_LIMIT_KEYS: usize = 1000;

/// The `key` label of the decisions on keys past [`MAX_LIMIT_KEYS`].
pub const OTHER_LIMIT_KEY: &str = "_other";

/// What a limiter decided for one task and one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitDecision {
    /// The task may run.
    Granted,
    /// Deferred: the key's rate was spent.
    DeferredRate,
    /// Deferred: the key's in-flight cap was reached.
    DeferredInFlight,
}

impl LimitDecision {
    /// All decisions, in label order.
    pub const ALL: [LimitDecision; 3] = [
        LimitDecision::Granted,
        LimitDecision::DeferredRate,
        LimitDecision::DeferredInFlight,
    ];

    /// The `decision` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitDecision::Granted => "granted",
            LimitDecision::DeferredRate => "deferred_rate",
            LimitDecision::DeferredInFlight => "deferred_in_flight",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// agentscale's metrics: the autoscaling and health surface of a worker
/// process. Cheap to clone (an `Arc`); share one per process between all
/// workers and the exporter.
#[derive(Clone)]
pub struct Metrics {
    values: Arc<Values>,
    #[cfg(feature = "prometheus")]
    registry: Arc<parking_lot::RwLock<prometheus_client::registry::Registry>>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field(
                "running_workers",
                &self.values.running_workers.load(Ordering::Relaxed),
            )
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All agentscale metric families, with no samples yet.
    pub fn new() -> Self {
        let values = Arc::new(Values::default());
        Metrics {
            #[cfg(feature = "prometheus")]
            registry: prometheus::registry(values.clone()),
            values,
        }
    }

    /// Sets the queue gauges of `queue` from a depth poll and marks the poll
    /// successful (for `/readyz`).
    pub fn record_depth(&self, queue: &str, depth: &Depth) {
        {
            let mut queues = self.values.queues.lock();
            match queues.get_mut(queue) {
                Some(d) => *d = *depth,
                None => {
                    queues.insert(queue.to_owned(), *depth);
                }
            }
        }
        self.values.depth_ok.store(true, Ordering::Release);
        self.values.depth_polls.fetch_add(1, Ordering::Relaxed);
    }

    /// The last depth recorded for `queue`.
    pub fn depth(&self, queue: &str) -> Option<Depth> {
        self.values.queues.lock().get(queue).copied()
    }

    /// Marks the last depth poll as failed (`/readyz` answers 503 until the
    /// next successful one).
    pub fn record_depth_error(&self) {
        self.values.depth_ok.store(false, Ordering::Release);
        self.values.depth_polls.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of depth polls recorded so far (successful or not).
    pub fn depth_polls(&self) -> u64 {
        self.values.depth_polls.load(Ordering::Acquire)
    }

    /// Counts one task outcome.
    pub fn record_outcome(&self, outcome: Outcome) {
        self.record_outcomes(outcome, 1);
    }

    /// Counts `n` task outcomes at once.
    pub fn record_outcomes(&self, outcome: Outcome, n: u64) {
        if n > 0 {
            self.values.outcomes[outcome.index()].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// The current value of one outcome counter.
    pub fn outcome_count(&self, outcome: Outcome) -> u64 {
        self.values.outcomes[outcome.index()].load(Ordering::Relaxed)
    }

    /// Observes one handler run time.
    pub fn observe_duration(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let bucket = (0..DURATION_BUCKETS)
            .find(|&i| secs <= duration_bound(i))
            .unwrap_or(DURATION_BUCKETS);
        let v = &self.values;
        v.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        v.duration_sum_ns.fetch_add(ns, Ordering::Relaxed);
        v.duration_count.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one answer of a typed tool call
    /// ([`ToolCacheExt::get_or_compute_json`](crate::typed::ToolCacheExt::get_or_compute_json)).
    pub fn record_tool_cache(&self, outcome: crate::typed::CacheOutcome) {
        self.values.tool_cache[tool_cache_index(outcome)].fetch_add(1, Ordering::Relaxed);
    }

    /// The current count of one tool-cache outcome.
    pub fn tool_cache_count(&self, outcome: crate::typed::CacheOutcome) -> u64 {
        self.values.tool_cache[tool_cache_index(outcome)].load(Ordering::Relaxed)
    }

    /// Counts one limiter decision for `key` (the worker records these for
    /// its limiters).
    pub fn record_limit(&self, key: &str, decision: LimitDecision) {
        let mut limits = self.values.limits.lock();
        if let Some(s) = limits.get_mut(key) {
            s[decision.index()] += 1;
            return;
        }
        let name = if limits.len() < MAX_LIMIT_KEYS {
            key
        } else {
            OTHER_LIMIT_KEY
        };
        limits.entry(name.to_owned()).or_default()[decision.index()] += 1;
    }

    /// The decisions counted for `key` so far.
    pub fn limit_count(&self, key: &str, decision: LimitDecision) -> u64 {
        self.values
            .limits
            .lock()
            .get(key)
            .map_or(0, |s| s[decision.index()])
    }

    /// Counts `n` due delayed tasks a queue keeper moved to ready.
    pub fn record_promoted(&self, n: u64) {
        self.values.promoted.fetch_add(n, Ordering::Relaxed);
    }

    /// Due delayed tasks moved to ready by queue keepers so far.
    pub fn promoted_count(&self) -> u64 {
        self.values.promoted.load(Ordering::Relaxed)
    }

    /// A queue keeper started: it counts as a running process for `/readyz`.
    pub(crate) fn keeper_started(&self) {
        self.values.running_workers.fetch_add(1, Ordering::AcqRel);
    }

    /// A queue keeper stopped.
    pub(crate) fn keeper_stopped(&self) {
        self.values.running_workers.fetch_sub(1, Ordering::AcqRel);
    }

    /// Adjusts the busy-slot gauge.
    pub(crate) fn add_busy(&self, delta: i64) {
        self.values.slots_busy.fetch_add(delta, Ordering::Relaxed);
    }

    /// A worker with `slots` handler slots started running.
    pub(crate) fn worker_started(&self, slots: usize) {
        let slots = i64::try_from(slots).unwrap_or(i64::MAX);
        self.values.slots_total.fetch_add(slots, Ordering::Relaxed);
        self.values.running_workers.fetch_add(1, Ordering::AcqRel);
    }

    /// A running worker's concurrency changed by `delta` slots.
    pub(crate) fn slots_resized(&self, delta: i64) {
        self.values.slots_total.fetch_add(delta, Ordering::Relaxed);
    }

    /// A worker began draining: the process is shutting down.
    pub(crate) fn worker_draining(&self) {
        self.values.draining.store(true, Ordering::Release);
    }

    /// A worker stopped.
    pub(crate) fn worker_stopped(&self, slots: usize) {
        let slots = i64::try_from(slots).unwrap_or(i64::MAX);
        self.values.slots_total.fetch_sub(slots, Ordering::Relaxed);
        self.values.running_workers.fetch_sub(1, Ordering::AcqRel);
    }

    /// True once a worker using these metrics began draining (shutdown).
    pub fn is_draining(&self) -> bool {
        self.values.draining.load(Ordering::Acquire)
    }

    /// Whether `/readyz` answers 200: a worker or queue keeper runs, none is
    /// draining, and the last queue-depth poll succeeded.
    pub fn is_ready(&self) -> bool {
        self.values.running_workers.load(Ordering::Acquire) > 0
            && !self.values.draining.load(Ordering::Acquire)
            && self.values.depth_ok.load(Ordering::Acquire)
    }
}

#[cfg(all(test, feature = "prometheus"))]
mod tests {
    use super::*;

    #[test]
    fn encodes_all_families_with_their_labels() {
        let m = Metrics::new();
        m.record_depth(
            "q1",
            &Depth {
                ready: 3,
                in_flight: 2,
                delayed: 3,
                due_delayed: 1,
                dead: 4,
                oldest_ready_age: Some(Duration::from_secs(2)),
            },
        );
        m.record_outcome(Outcome::Completed);
        m.record_outcomes(Outcome::Retried, 2);
        m.observe_duration(Duration::from_millis(3));
        m.record_promoted(2);
        m.record_limit("tenant_a", LimitDecision::Granted);
        m.record_limit("tenant_a", LimitDecision::DeferredRate);
        m.record_limit("tenant_a", LimitDecision::DeferredRate);
        m.worker_started(8);
        m.add_busy(3);
        let text = m.encode();
        for line in [
            "agentscale_task_queue_depth{queue=\"q1\"} 5",
            "agentscale_task_queue_ready{queue=\"q1\"} 3",
            "agentscale_task_queue_in_flight{queue=\"q1\"} 2",
            "agentscale_task_queue_delayed{queue=\"q1\"} 3",
            "agentscale_task_queue_delayed_due{queue=\"q1\"} 1",
            "agentscale_task_queue_due{queue=\"q1\"} 6",
            "agentscale_tasks_promoted_total 2",
            "agentscale_task_queue_dead{queue=\"q1\"} 4",
            "agentscale_task_queue_oldest_age_seconds{queue=\"q1\"} 2.0",
            "agentscale_worker_slots{state=\"busy\"} 3",
            "agentscale_worker_slots{state=\"total\"} 8",
            "agentscale_tasks_total{outcome=\"completed\"} 1",
            "agentscale_tasks_total{outcome=\"retried\"} 2",
            "agentscale_tasks_total{outcome=\"dead_lettered\"} 0",
            "agentscale_task_duration_seconds_count 1",
            "agentscale_limit_decisions_total{key=\"tenant_a\",decision=\"granted\"} 1",
            "agentscale_limit_decisions_total{key=\"tenant_a\",decision=\"deferred_rate\"} 2",
            "agentscale_limit_decisions_total{key=\"tenant_a\",decision=\"deferred_in_flight\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(m.is_ready());
        m.worker_draining();
        assert!(!m.is_ready());
    }

    #[test]
    fn limit_keys_are_bounded() {
        let m = Metrics::new();
        for i in 0..MAX_LIMIT_KEYS + 5 {
            m.record_limit(&format!("k{i}"), LimitDecision::Granted);
        }
        assert_eq!(m.limit_count("k0", LimitDecision::Granted), 1);
        assert_eq!(
            m.limit_count(&format!("k{}", MAX_LIMIT_KEYS + 1), LimitDecision::Granted),
            0
        );
        assert_eq!(m.limit_count(OTHER_LIMIT_KEY, LimitDecision::Granted), 5);
        let text = m.encode();
        assert_eq!(
            text.matches("agentscale_limit_decisions_total{").count(),
            (MAX_LIMIT_KEYS + 1) * 3
        );
    }

    #[test]
    fn not_ready_until_a_worker_runs_and_depth_polls() {
        let m = Metrics::new();
        assert!(!m.is_ready());
        m.worker_started(1);
        assert!(!m.is_ready());
        m.record_depth("q", &Depth::default());
        assert!(m.is_ready());
        m.record_depth_error();
        assert!(!m.is_ready());
        m.record_depth("q", &Depth::default());
        m.worker_stopped(1);
        assert!(!m.is_ready());
    }
}
