//! Prometheus / OpenMetrics encoding of [`Metrics`] through `prometheus-client`:
//! a collector that reads the atomics at scrape time, registered in a registry
//! the service can add its own metrics to.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::{duration_bound, Metrics, Outcome, Values, DURATION_BUCKETS};
use crate::queue::Depth;
use crate::typed::CacheOutcome;

pub(super) fn registry(values: Arc<Values>) -> Arc<RwLock<Registry>> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentscaleCollector(values)));
    Arc::new(RwLock::new(registry))
}

/// The queue gauge families: name, help, and how to read the value.
type QueueGauge = (&'static str, &'static str, fn(&Depth) -> f64);

const QUEUE_GAUGES: [QueueGauge; 8] = [
    (
        "agentscale_task_queue_due",
        "Tasks ready, in flight, or delayed and already due (the number to scale on)",
        |d| d.due() as f64,
    ),
    ("agentscale_task_queue_depth", "Tasks ready plus in flight", |d| {
        d.backlog() as f64
    }),
    ("agentscale_task_queue_ready", "Tasks deliverable now", |d| {
        d.ready as f64
    }),
    (
        "agentscale_task_queue_in_flight",
        "Tasks leased and not yet acked or nacked",
        |d| d.in_flight as f64,
    ),
    (
        "agentscale_task_queue_delayed",
        "Tasks waiting for a retry delay or not_before",
        |d| d.delayed as f64,
    ),
    (
        "agentscale_task_queue_delayed_due",
        "Delayed tasks whose due time has passed, not yet moved to ready",
        |d| d.due_delayed as f64,
    ),
    (
        "agentscale_task_queue_dead",
        "Tasks in the dead-letter store",
        |d| d.dead as f64,
    ),
    (
        "agentscale_task_queue_oldest_age_seconds",
        "Age of the oldest ready task in seconds (0 when unknown or empty)",
        |d| d.oldest_ready_age.map(|a| a.as_secs_f64()).unwrap_or(0.0),
    ),
];

#[derive(Debug)]
struct AgentscaleCollector(Arc<Values>);

impl Collector for AgentscaleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let v = &self.0;
        let queues: Vec<(String, Depth)> = v.queues.lock().iter().map(|(q, d)| (q.clone(), *d)).collect();
        for (name, help, read) in QUEUE_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (queue, depth) in &queues {
                let labels = [("queue", queue.as_str())];
                let value = read(depth);
                // Counts are integers; only the age is fractional.
                if name.ends_with("_seconds") {
                    family.encode_family(&labels)?.encode_gauge(&value)?;
                } else {
                    family.encode_family(&labels)?.encode_gauge(&(value as i64))?;
                }
            }
        }

        let mut slots = encoder.encode_descriptor(
            "agentscale_worker_slots",
            "Handler slots of this process by state",
            None,
            MetricType::Gauge,
        )?;
        for (state, value) in [("busy", &v.slots_busy), ("total", &v.slots_total)] {
            slots
                .encode_family(&[("state", state)])?
                .encode_gauge(&value.load(Ordering::Relaxed))?;
        }

        let mut outcomes = encoder.encode_descriptor(
            "agentscale_tasks",
            "Task attempts by outcome",
            None,
            MetricType::Counter,
        )?;
        for o in Outcome::ALL {
            let n = v.outcomes[o.index()].load(Ordering::Relaxed);
            outcomes
                .encode_family(&[("outcome", o.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }

        let mut tools = encoder.encode_descriptor(
            "agentscale_tool_cache",
            "Typed tool calls by how they were answered",
            None,
            MetricType::Counter,
        )?;
        for o in [CacheOutcome::Hit, CacheOutcome::Miss, CacheOutcome::Coalesced] {
            tools
                .encode_family(&[("outcome", o.as_str())])?
                .encode_counter::<NoLabelSet, _, u64>(
                    &v.tool_cache[super::tool_cache_index(o)].load(Ordering::Relaxed),
                    None,
                )?;
        }

        let mut promoted = encoder.encode_descriptor(
            "agentscale_tasks_promoted",
            "Due delayed tasks moved to ready by a queue keeper",
            None,
            MetricType::Counter,
        )?;
        promoted.encode_counter::<NoLabelSet, _, u64>(&v.promoted.load(Ordering::Relaxed), None)?;

        let limits: Vec<(String, [u64; 3])> = v.limits.lock().iter().map(|(k, c)| (k.clone(), *c)).collect();
        let mut decisions = encoder.encode_descriptor(
            "agentscale_limit_decisions",
            "Limiter decisions per limit key",
            None,
            MetricType::Counter,
        )?;
        for (key, counts) in &limits {
            for d in super::LimitDecision::ALL {
                decisions
                    .encode_family(&[("key", key.as_str()), ("decision", d.as_str())])?
                    .encode_counter::<NoLabelSet, _, u64>(&counts[d.index()], None)?;
            }
        }

        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(DURATION_BUCKETS + 1);
        for (i, count) in v.duration_buckets.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let bound = if i < DURATION_BUCKETS {
                duration_bound(i)
            } else {
                f64::MAX
            };
            buckets.push((bound, cumulative));
        }
        let sum = v.duration_sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let count = v.duration_count.load(Ordering::Relaxed);
        encoder
            .encode_descriptor(
                "agentscale_task_duration_seconds",
                "Handler run time per attempt",
                None,
                MetricType::Histogram,
            )?
            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        Ok(())
    }
}

impl Metrics {
    /// Registers the service's own metrics next to agentscale's, in the
    /// `prometheus-client` registry this crate re-exports as
    /// [`crate::metrics::prometheus_client`] (use that path,
    /// so the versions match).
    pub fn with_registry<R>(&self, f: impl FnOnce(&mut Registry) -> R) -> R {
        f(&mut self.registry.write())
    }

    /// The registry in Prometheus / OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        let registry = self.registry.read();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
