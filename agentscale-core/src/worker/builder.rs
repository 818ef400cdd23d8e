//! [`WorkerBuilder`]: the worker's settings and their validation.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{backoff, live, Backoff, Handler, Heartbeat, RunFlags, Shared, Worker, WorkerStats};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::orchestrate::Orchestrator;
use crate::queue::TaskQueue;
use crate::results::ResultStore;

/// Builds a [`Worker`]; see [`Worker::builder`].
pub struct WorkerBuilder<H> {
    queue: Arc<dyn TaskQueue>,
    handler: H,
    concurrency: usize,
    backoff: Backoff,
    task_timeout: Duration,
    grace_period: Duration,
    poll_wait: Duration,
    ack_batch: usize,
    heartbeat: Option<Duration>,
    depth_poll_interval: Duration,
    rng_seed: Option<u64>,
    metrics: Option<Metrics>,
    name: Option<String>,
    shards: Option<usize>,
    results: Option<Arc<dyn ResultStore>>,
    orchestrator: Option<Arc<Orchestrator>>,
    limiters: Vec<super::limit::WorkerLimiter>,
}

impl<H> fmt::Debug for WorkerBuilder<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queue", &self.queue.name())
            .field("concurrency", &self.concurrency)
            .field("backoff", &self.backoff)
            .field("task_timeout", &self.task_timeout)
            .field("grace_period", &self.grace_period)
            .field("poll_wait", &self.poll_wait)
            .field("ack_batch", &self.ack_batch)
            .field("heartbeat", &self.heartbeat)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> WorkerBuilder<H> {
    pub(super) fn new(queue: Arc<dyn TaskQueue>, handler: H) -> Self {
        WorkerBuilder {
            queue,
            handler,
            concurrency: 16,
            backoff: Backoff::default(),
            task_timeout: Duration::from_secs(600),
            grace_period: Duration::from_secs(25),
            poll_wait: Duration::from_secs(1),
            ack_batch: 256,
            heartbeat: None,
            depth_poll_interval: Duration::from_secs(5),
            rng_seed: None,
            metrics: None,
            name: None,
            shards: None,
            results: None,
            orchestrator: None,
            limiters: Vec::new(),
        }
    }

    /// Applies `limiter` before each handler runs: the task takes a token
    /// and an in-flight slot of every key `keys` returns for it (say
    /// `tenant:<tenant>` and `model:<model>`); a key without a limit is not
    /// held back. A task over a limit is deferred ([`Nack::Defer`]): handed
    /// back uncharged, to run after the limiter's suggested wait. Call it
    /// again to add more limiters.
    ///
    /// [`Nack::Defer`]: crate::Nack::Defer
    pub fn limiter(
        mut self,
        limiter: Arc<dyn crate::flow::limit::Limiter>,
        keys: impl Fn(&crate::Task) -> Vec<String> + Send + Sync + 'static,
    ) -> Self {
        self.limiters.push(super::limit::WorkerLimiter {
            limiter,
            keys: Arc::new(keys),
        });
        self
    }

    /// Handler slots: tasks run at once (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// Retry delays (default [`Backoff::default`]: 100 ms doubling to 30 s, full jitter).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Per-attempt time limit; a handler that exceeds it is cancelled and the
    /// attempt fails with [`Error::Timeout`] (default 10 min).
    pub fn task_timeout(mut self, d: Duration) -> Self {
        self.task_timeout = d;
        self
    }

    /// How long shutdown waits for in-flight tasks before cancelling and
    /// releasing them (default 25 s).
    pub fn grace_period(mut self, d: Duration) -> Self {
        self.grace_period = d;
        self
    }

    /// How long one lease call waits for tasks (default 1 s). Also bounds how
    /// long shutdown waits for a lease call in progress.
    pub fn poll_wait(mut self, d: Duration) -> Self {
        self.poll_wait = d;
        self
    }

    /// Most leases acked in one [`TaskQueue::ack_batch`] call (default 256).
    pub fn ack_batch(mut self, n: usize) -> Self {
        self.ack_batch = n;
        self
    }

    /// Overrides the heartbeat interval (default: the queue's
    /// `lease_timeout / 3`). Ignored when the queue cannot extend leases.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.heartbeat = Some(d);
        self
    }

    /// How often the depth sampler polls [`TaskQueue::depth`] for the metrics
    /// (default 5 s; only with [`WorkerBuilder::metrics`]).
    pub fn depth_poll_interval(mut self, d: Duration) -> Self {
        self.depth_poll_interval = d;
        self
    }

    /// Seeds the backoff jitter (for reproducible tests).
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.rng_seed = Some(seed);
        self
    }

    /// Records slots, outcomes, durations and the queue depth in `metrics`.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Driver tasks of this worker (default 1; at most the concurrency). Each driver leases for the shared slots and polls its
    /// handlers' futures on one thread, so handlers that burn CPU spread over
    /// at most this many cores; spawn blocking work with
    /// `tokio::task::spawn_blocking`.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }

    /// Records every task's terminal state in `store` (the handler's output,
    /// or the dead-letter reason, or that it expired), before acking it. An
    /// output over the store's size limit dead-letters the task with that
    /// reason. Results are recorded under the task's id, or under the
    /// coordinator's id for a continuation (see [`crate::orchestrate`]).
    pub fn results(mut self, store: Arc<dyn ResultStore>) -> Self {
        self.results = Some(store);
        self
    }

    /// Runs fan-out bookkeeping for the tasks of this worker: records results
    /// in the orchestrator's result store, reports children into their joins
    /// (enqueuing continuations when a join is decided), handles deadline
    /// tasks, skips children of decided joins and sets
    /// [`TaskContext::is_cancelled`](super::TaskContext::is_cancelled) on running ones.
    pub fn orchestrator(mut self, orchestrator: Arc<Orchestrator>) -> Self {
        self.orchestrator = Some(orchestrator);
        self
    }

    /// A name for this worker in logs (default: the queue name).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Validates the configuration; [`Error::InvalidConfig`] names what is wrong.
    pub fn build(self) -> Result<Worker<H>> {
        let invalid = |m: String| Err(Error::InvalidConfig(m));
        if self.concurrency == 0 {
            return invalid("worker concurrency must be at least 1".into());
        }
        if self.concurrency > live::max_concurrency() {
            return invalid(format!("worker concurrency {} is too large", self.concurrency));
        }
        if self.task_timeout.is_zero() {
            return invalid("worker task_timeout must be greater than zero".into());
        }
        if self.grace_period.is_zero() {
            return invalid("worker grace_period must be greater than zero".into());
        }
        if self.poll_wait.is_zero() {
            return invalid("worker poll_wait must be greater than zero".into());
        }
        if self.ack_batch == 0 {
            return invalid("worker ack_batch must be at least 1".into());
        }
        if self.depth_poll_interval.is_zero() {
            return invalid("worker depth_poll_interval must be greater than zero".into());
        }
        if let Some(h) = self.heartbeat {
            if h.is_zero() {
                return invalid("worker heartbeat_interval must be greater than zero".into());
            }
        }
        let shards = match self.shards {
            Some(0) => return invalid("worker shards must be at least 1".into()),
            Some(n) => n.min(self.concurrency),
            None => 1,
        };
        if let Err(m) = self.backoff.validate() {
            return invalid(m);
        }
        let caps = self.queue.capabilities();
        let heartbeat = if caps.lease_extension {
            let interval = self.heartbeat.unwrap_or(caps.lease_timeout / 3);
            if interval.is_zero() {
                return invalid(format!(
                    "queue {} reports a zero lease_timeout",
                    self.queue.name()
                ));
            }
            Some(Heartbeat {
                interval,
                extend_by: caps.lease_timeout,
            })
        } else {
            // No heartbeat can keep a lease alive: a task that may run past
            // the lease would be taken back and run again while it runs.
            if self.task_timeout >= caps.lease_timeout {
                return invalid(format!(
                    "worker task_timeout {:?} must be below the lease_timeout {:?} of queue {}, \
                     which cannot extend leases (lower task_timeout or raise the queue's lease_timeout)",
                    self.task_timeout,
                    caps.lease_timeout,
                    self.queue.name()
                ));
            }
            None
        };
        let seed = self.rng_seed.unwrap_or_else(rand::random);
        let name = self.name.unwrap_or_else(|| self.queue.name().to_owned());
        let results = self
            .results
            .or_else(|| self.orchestrator.as_ref().map(|o| o.results().clone()));
        let ack_retry_budget = caps.lease_timeout / 2;
        Ok(Worker {
            shared: Arc::new(Shared {
                queue: self.queue,
                handler: self.handler,
                stats: Arc::new(WorkerStats::default()),
                metrics: self.metrics,
                backoff: self.backoff,
                rng: backoff::JitterRng::new(seed),
                task_timeout: self.task_timeout,
                heartbeat,
                flags: Arc::new(RunFlags::default()),
                slots: Arc::new(live::Slots::new(self.concurrency)),
                name,
                results,
                orchestrator: self.orchestrator,
                ack_retry_budget,
                limiters: self.limiters,
            }),
            concurrency: self.concurrency,
            shards,
            grace_period: self.grace_period,
            poll_wait: self.poll_wait,
            ack_batch: self.ack_batch,
            depth_poll_interval: self.depth_poll_interval,
        })
    }
}
