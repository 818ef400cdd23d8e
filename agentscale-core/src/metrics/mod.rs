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
//! | `/readyz` | `200` once a worker runs and the last queue-depth poll succeeded; `503` before, while draining and after shutdown (readiness probe) |
//!
//! # Metrics
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `agentscale_task_queue_depth` | gauge | `queue` | ready + in-flight ([`Depth::backlog`]): **scale on this** |
//! | `agentscale_task_queue_ready` | gauge | `queue` | deliverable now |
//! | `agentscale_task_queue_in_flight` | gauge | `queue` | leased, not yet acked |
//! | `agentscale_task_queue_delayed` | gauge | `queue` | waiting for a retry delay or `not_before` |
//! | `agentscale_task_queue_dead` | gauge | `queue` | in the dead-letter store |
//! | `agentscale_task_queue_oldest_age_seconds` | gauge | `queue` | age of the oldest ready task (0 when unknown or empty) |
//! | `agentscale_worker_slots` | gauge | `state="busy"\|"total"` | handler slots of this process |
//! | `agentscale_tasks_total` | counter | `outcome` | `completed`, `retried`, `dead_lettered`, `released`, `lease_lost`, `panicked`, `timed_out` |
//! | `agentscale_task_duration_seconds` | histogram | | handler run time of every attempt |
//!
//! `panicked` and `timed_out` count failed attempts by cause; each such attempt
//! is also counted once as `retried` or `dead_lettered`.
//!
//! The queue gauges are refreshed by a sampler each worker runs (every
//! [`WorkerBuilder::depth_poll_interval`](crate::worker::WorkerBuilder::depth_poll_interval)),
//! so every replica exports the same, queue-wide numbers.
//!
//! # Autoscaling on the queue depth
//!
//! Because the depth is queue-wide, scale on its **maximum** (or average)
//! across replicas, never on the sum.
//!
//! **Kubernetes HPA (External metric)**, with prometheus-adapter exposing
//! `agentscale_task_queue_depth` as an external metric:
//!
//! ```yaml
//! metrics:
//! - type: External
//!   external:
//!     metric:
//!       name: agentscale_task_queue_depth
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
//!     query: max(agentscale_task_queue_depth{queue="agent-tasks"})
//!     threshold: "32"
//!     activationThreshold: "1"   # scale from zero on the first task
//! ```
//!
//! Point the liveness probe at `/healthz` and the readiness probe at
//! `/readyz`. Workers pull, so readiness gates no traffic; it shows rollouts
//! and dashboards which replicas are working, which are draining, and which
//! cannot reach their queue.

mod exporter;

pub use exporter::{Exporter, ExporterHandle};

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::queue::Depth;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

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
}

impl Outcome {
    /// All outcomes.
    pub const ALL: [Outcome; 7] = [
        Outcome::Completed,
        Outcome::Retried,
        Outcome::DeadLettered,
        Outcome::Released,
        Outcome::LeaseLost,
        Outcome::Panicked,
        Outcome::TimedOut,
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
        }
    }
}

struct QueueGauges {
    depth: Family<QueueLabels, Gauge>,
    ready: Family<QueueLabels, Gauge>,
    in_flight: Family<QueueLabels, Gauge>,
    delayed: Family<QueueLabels, Gauge>,
    dead: Family<QueueLabels, Gauge>,
    oldest_age: Family<QueueLabels, Gauge<f64, AtomicU64>>,
}

struct Inner {
    registry: RwLock<Registry>,
    queues: QueueGauges,
    slots_busy: Gauge,
    slots_total: Gauge,
    outcomes: [Counter; 7],
    duration: Histogram,
    running_workers: AtomicI64,
    draining: AtomicBool,
    depth_ok: AtomicBool,
    depth_polls: AtomicU64,
}

/// agentscale's Prometheus registry. Cheap to clone (an `Arc`); share one per
/// process between all workers and the [`Exporter`].
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field(
                "running_workers",
                &self.inner.running_workers.load(Ordering::Relaxed),
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

fn u64_to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Metrics {
    /// A registry with all agentscale families registered (and no samples yet).
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let queues = QueueGauges {
            depth: Family::default(),
            ready: Family::default(),
            in_flight: Family::default(),
            delayed: Family::default(),
            dead: Family::default(),
            oldest_age: Family::default(),
        };
        registry.register(
            "agentscale_task_queue_depth",
            "Tasks ready plus in flight (the backlog to scale on)",
            queues.depth.clone(),
        );
        registry.register(
            "agentscale_task_queue_ready",
            "Tasks deliverable now",
            queues.ready.clone(),
        );
        registry.register(
            "agentscale_task_queue_in_flight",
            "Tasks leased and not yet acked or nacked",
            queues.in_flight.clone(),
        );
        registry.register(
            "agentscale_task_queue_delayed",
            "Tasks waiting for a retry delay or not_before",
            queues.delayed.clone(),
        );
        registry.register(
            "agentscale_task_queue_dead",
            "Tasks in the dead-letter store",
            queues.dead.clone(),
        );
        registry.register(
            "agentscale_task_queue_oldest_age_seconds",
            "Age of the oldest ready task in seconds (0 when unknown or empty)",
            queues.oldest_age.clone(),
        );
        let slots: Family<StateLabels, Gauge> = Family::default();
        registry.register(
            "agentscale_worker_slots",
            "Handler slots of this process by state",
            slots.clone(),
        );
        let slots_busy = slots.get_or_create_owned(&StateLabels { state: "busy" });
        let slots_total = slots.get_or_create_owned(&StateLabels { state: "total" });
        let outcomes_family: Family<OutcomeLabels, Counter> = Family::default();
        registry.register(
            "agentscale_tasks",
            "Task attempts by outcome",
            outcomes_family.clone(),
        );
        let outcomes =
            Outcome::ALL.map(|o| outcomes_family.get_or_create_owned(&OutcomeLabels { outcome: o.as_str() }));
        let duration = Histogram::new(exponential_buckets(0.000_25, 2.0, 18));
        registry.register(
            "agentscale_task_duration_seconds",
            "Handler run time per attempt",
            duration.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: RwLock::new(registry),
                queues,
                slots_busy,
                slots_total,
                outcomes,
                duration,
                running_workers: AtomicI64::new(0),
                draining: AtomicBool::new(false),
                depth_ok: AtomicBool::new(false),
                depth_polls: AtomicU64::new(0),
            }),
        }
    }

    /// Registers the service's own metrics next to agentscale's (an escape
    /// hatch exposing the `prometheus-client` registry).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.inner.registry.write())
    }

    /// The registry in Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        let registry = self.inner.registry.read();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// Sets the queue gauges of `queue` from a depth poll and marks the poll
    /// successful (for `/readyz`).
    pub fn record_depth(&self, queue: &str, depth: &Depth) {
        let q = &self.inner.queues;
        let labels = QueueLabels {
            queue: queue.to_owned(),
        };
        q.depth.get_or_create(&labels).set(u64_to_i64(depth.backlog()));
        q.ready.get_or_create(&labels).set(u64_to_i64(depth.ready));
        q.in_flight
            .get_or_create(&labels)
            .set(u64_to_i64(depth.in_flight));
        q.delayed.get_or_create(&labels).set(u64_to_i64(depth.delayed));
        q.dead.get_or_create(&labels).set(u64_to_i64(depth.dead));
        q.oldest_age
            .get_or_create(&labels)
            .set(depth.oldest_ready_age.map(|d| d.as_secs_f64()).unwrap_or(0.0));
        self.inner.depth_ok.store(true, Ordering::Release);
        self.inner.depth_polls.fetch_add(1, Ordering::Relaxed);
    }

    /// Marks the last depth poll as failed (`/readyz` answers 503 until the
    /// next successful one).
    pub fn record_depth_error(&self) {
        self.inner.depth_ok.store(false, Ordering::Release);
        self.inner.depth_polls.fetch_add(1, Ordering::Relaxed);
    }

    /// Number of depth polls recorded so far (successful or not).
    pub fn depth_polls(&self) -> u64 {
        self.inner.depth_polls.load(Ordering::Acquire)
    }

    /// Counts one task outcome.
    pub fn record_outcome(&self, outcome: Outcome) {
        self.inner.outcomes[outcome.index()].inc();
    }

    /// Counts `n` task outcomes at once.
    pub fn record_outcomes(&self, outcome: Outcome, n: u64) {
        if n > 0 {
            self.inner.outcomes[outcome.index()].inc_by(n);
        }
    }

    /// The current value of one outcome counter.
    pub fn outcome_count(&self, outcome: Outcome) -> u64 {
        self.inner.outcomes[outcome.index()].get()
    }

    /// Observes one handler run time.
    pub fn observe_duration(&self, d: Duration) {
        self.inner.duration.observe(d.as_secs_f64());
    }

    /// Adjusts the busy-slot gauge.
    pub(crate) fn add_busy(&self, delta: i64) {
        self.inner.slots_busy.inc_by(delta);
    }

    /// A worker with `slots` handler slots started running.
    pub(crate) fn worker_started(&self, slots: usize) {
        self.inner.slots_total.inc_by(u64_to_i64(slots as u64));
        self.inner.running_workers.fetch_add(1, Ordering::AcqRel);
    }

    /// A worker began draining: the process is shutting down.
    pub(crate) fn worker_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// A worker stopped.
    pub(crate) fn worker_stopped(&self, slots: usize) {
        self.inner.slots_total.dec_by(u64_to_i64(slots as u64));
        self.inner.running_workers.fetch_sub(1, Ordering::AcqRel);
    }

    /// True once a worker using these metrics began draining (shutdown).
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Whether `/readyz` answers 200: a worker runs, none is draining, and the
    /// last queue-depth poll succeeded.
    pub fn is_ready(&self) -> bool {
        self.inner.running_workers.load(Ordering::Acquire) > 0
            && !self.inner.draining.load(Ordering::Acquire)
            && self.inner.depth_ok.load(Ordering::Acquire)
    }
}

#[cfg(test)]
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
                delayed: 1,
                dead: 4,
                oldest_ready_age: Some(Duration::from_secs(2)),
            },
        );
        m.record_outcome(Outcome::Completed);
        m.record_outcomes(Outcome::Retried, 2);
        m.observe_duration(Duration::from_millis(3));
        m.worker_started(8);
        m.add_busy(3);
        let text = m.encode();
        for line in [
            "agentscale_task_queue_depth{queue=\"q1\"} 5",
            "agentscale_task_queue_ready{queue=\"q1\"} 3",
            "agentscale_task_queue_in_flight{queue=\"q1\"} 2",
            "agentscale_task_queue_delayed{queue=\"q1\"} 1",
            "agentscale_task_queue_dead{queue=\"q1\"} 4",
            "agentscale_task_queue_oldest_age_seconds{queue=\"q1\"} 2.0",
            "agentscale_worker_slots{state=\"busy\"} 3",
            "agentscale_worker_slots{state=\"total\"} 8",
            "agentscale_tasks_total{outcome=\"completed\"} 1",
            "agentscale_tasks_total{outcome=\"retried\"} 2",
            "agentscale_tasks_total{outcome=\"dead_lettered\"} 0",
            "agentscale_task_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(m.is_ready());
        m.worker_draining();
        assert!(!m.is_ready());
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
