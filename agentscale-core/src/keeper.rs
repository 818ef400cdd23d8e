//! The queue keeper: the small always-on process that keeps a queue moving
//! and visible while **no worker runs**.
//!
//! A backend moves delayed tasks (retries waiting for their backoff,
//! `not_before` tasks) to the ready queue when a worker leases, and the queue
//! gauges are exported by the workers' samplers. A fleet scaled to zero has
//! neither: a retry whose backoff ended would wait for a worker that the
//! autoscaler has no reason to start. A [`QueueKeeper`] closes that gap. Every
//! [`interval`](QueueKeeperConfig::interval) it
//!
//! 1. promotes due delayed tasks ([`TaskQueue::promote_due`], bounded per
//!    round), so a native scaler that reads the broker (KEDA's
//!    `redis-streams` lag) sees them as ready work, and
//! 2. polls [`TaskQueue::depth`] into [`Metrics`], so
//!    `agentscale_task_queue_due` (ready + in flight + delayed and due) is
//!    exported by a process that is always up; serve it with the
//!    [`Exporter`](crate::metrics) as usual.
//!
//! It leases nothing and needs no handler: one replica with a few MiB of
//! memory is enough, and two are harmless (promotion is atomic in the
//! backend). A backend without a delayed set of its own
//! ([`Error::Unsupported`], e.g. Kafka, whose retry relay runs in the
//! workers) is only exported; its depth counts retries as due.
//!
//! ```
//! # use std::sync::Arc; use std::time::Duration;
//! # use agentscale_core::{keeper::{QueueKeeper, QueueKeeperConfig}, metrics::Metrics, TaskQueue};
//! # async fn run(queue: Arc<dyn TaskQueue>) -> agentscale_core::Result<()> {
//! let metrics = Metrics::new();
//! let config = QueueKeeperConfig::builder().interval(Duration::from_secs(2)).build()?;
//! let keeper = QueueKeeper::new(queue, metrics.clone(), config);
//! let report = keeper.run_until(agentscale_core::worker::shutdown_signal()).await;
//! # let _ = report; Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Metrics;
use crate::queue::{Depth, TaskQueue};

/// Configuration of a [`QueueKeeper`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct QueueKeeperConfig {
    /// How often to promote and export (default 5 s; at least 10 ms).
    #[serde(with = "crate::config::duration")]
    pub interval: Duration,
    /// Tasks promoted per backend call (default 1000, at most 100 000).
    pub promote_batch: usize,
    /// Promotion calls per round at most (default 10), so one round has a
    /// bounded cost; the rest is promoted next round.
    pub max_batches_per_round: usize,
}

impl Default for QueueKeeperConfig {
    fn default() -> Self {
        QueueKeeperConfig {
            interval: Duration::from_secs(5),
            promote_batch: 1000,
            max_batches_per_round: 10,
        }
    }
}

impl QueueKeeperConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> QueueKeeperConfigBuilder {
        QueueKeeperConfigBuilder {
            config: QueueKeeperConfig::default(),
        }
    }

    /// Checks every field; [`Error::InvalidConfig`] names the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidConfig(format!("queue keeper: {m}")));
        if self.interval < Duration::from_millis(10) {
            return bad("interval must be at least 10ms");
        }
        if self.promote_batch == 0 || self.promote_batch > 100_000 {
            return bad("promote_batch must be between 1 and 100000");
        }
        if self.max_batches_per_round == 0 {
            return bad("max_batches_per_round is zero");
        }
        Ok(())
    }
}

/// Builder of [`QueueKeeperConfig`]; validates at [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct QueueKeeperConfigBuilder {
    config: QueueKeeperConfig,
}

impl QueueKeeperConfigBuilder {
    /// How often to promote and export.
    pub fn interval(mut self, d: Duration) -> Self {
        self.config.interval = d;
        self
    }

    /// Tasks promoted per backend call.
    pub fn promote_batch(mut self, n: usize) -> Self {
        self.config.promote_batch = n;
        self
    }

    /// Promotion calls per round at most.
    pub fn max_batches_per_round(mut self, n: usize) -> Self {
        self.config.max_batches_per_round = n;
        self
    }

    /// The validated config.
    pub fn build(self) -> Result<QueueKeeperConfig> {
        self.config.validate()?;
        Ok(self.config)
    }
}

/// What one keeper round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeeperRound {
    /// Due delayed tasks moved to ready.
    pub promoted: u64,
    /// The depth polled after promoting (and exported).
    pub depth: Depth,
}

/// What a keeper did over its run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeeperReport {
    /// Rounds run.
    pub rounds: u64,
    /// Due delayed tasks moved to ready.
    pub promoted: u64,
    /// Rounds in which the queue answered with an error (logged, retried).
    pub errors: u64,
}

/// Promotes due delayed tasks and exports the queue gauges while no worker
/// runs. See the [module docs](self).
pub struct QueueKeeper {
    queue: Arc<dyn TaskQueue>,
    metrics: Metrics,
    config: QueueKeeperConfig,
    promote: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for QueueKeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueKeeper")
            .field("queue", &self.queue.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl QueueKeeper {
    /// A keeper of `queue` that records into `metrics`, with `config` (built
    /// by [`QueueKeeperConfigBuilder::build`]; [`run_until`](Self::run_until)
    /// refuses an invalid one).
    pub fn new(queue: Arc<dyn TaskQueue>, metrics: Metrics, config: QueueKeeperConfig) -> Self {
        QueueKeeper {
            queue,
            metrics,
            config,
            promote: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// One round: promote due delayed tasks (bounded), then poll the depth
    /// into the metrics. A backend that cannot promote is only polled from
    /// then on.
    pub async fn round(&self) -> Result<KeeperRound> {
        use std::sync::atomic::Ordering;
        let mut promoted = 0;
        if self.promote.load(Ordering::Relaxed) {
            for _ in 0..self.config.max_batches_per_round {
                match self.queue.promote_due(self.config.promote_batch).await {
                    Ok(n) => {
                        promoted += n;
                        if n < self.config.promote_batch as u64 {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        tracing::info!(
                            queue = self.queue.name(),
                            "queue promotes its own delayed tasks; keeper only exports"
                        );
                        self.promote.store(false, Ordering::Relaxed);
                        break;
                    }
                    Err(e) => {
                        self.metrics.record_promoted(promoted);
                        return Err(e);
                    }
                }
            }
        }
        self.metrics.record_promoted(promoted);
        if promoted > 0 {
            tracing::info!(queue = self.queue.name(), promoted, "promoted due delayed tasks");
        }
        match self.queue.depth().await {
            Ok(depth) => {
                self.metrics.record_depth(self.queue.name(), &depth);
                Ok(KeeperRound { promoted, depth })
            }
            Err(e) => {
                self.metrics.record_depth_error();
                Err(e)
            }
        }
    }

    /// Runs a round every interval until `shutdown` resolves. Queue errors
    /// are logged and counted, never fatal: the next round tries again.
    /// Marks the metrics ready (`/readyz`) while it runs.
    pub async fn run_until<F>(self, shutdown: F) -> Result<KeeperReport>
    where
        F: Future<Output = ()> + Send,
    {
        self.config.validate()?;
        let mut report = KeeperReport::default();
        self.metrics.keeper_started();
        tracing::info!(queue = self.queue.name(), interval = ?self.config.interval, "queue keeper started");
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tick.tick() => {}
            }
            report.rounds += 1;
            // A round's calls have the backend's own deadlines; bound the
            // round by the interval too, so a hung call cannot stop the keeper.
            match tokio::time::timeout(self.config.interval.max(Duration::from_secs(1)), self.round()).await {
                Ok(Ok(r)) => report.promoted += r.promoted,
                Ok(Err(e)) => {
                    report.errors += 1;
                    tracing::warn!(queue = self.queue.name(), error = %e, "queue keeper round failed");
                }
                Err(_) => {
                    report.errors += 1;
                    self.metrics.record_depth_error();
                    tracing::warn!(queue = self.queue.name(), "queue keeper round timed out");
                }
            }
        }
        self.metrics.keeper_stopped();
        tracing::info!(queue = self.queue.name(), ?report, "queue keeper stopped");
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validates() {
        assert!(QueueKeeperConfig::builder().build().is_ok());
        for bad in [
            QueueKeeperConfig::builder().interval(Duration::from_millis(1)),
            QueueKeeperConfig::builder().promote_batch(0),
            QueueKeeperConfig::builder().promote_batch(100_001),
            QueueKeeperConfig::builder().max_batches_per_round(0),
        ] {
            let e = bad.build().expect_err("invalid");
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        }
        let c: QueueKeeperConfig =
            serde_json::from_str(r#"{"interval":"2s","promote_batch":50}"#).expect("serde");
        assert_eq!((c.interval, c.promote_batch), (Duration::from_secs(2), 50));
    }
}
