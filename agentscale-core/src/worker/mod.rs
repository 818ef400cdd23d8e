//! The worker runtime: N concurrent handlers over any [`TaskQueue`].
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use agentscale_core::worker::{Handler, TaskContext, Worker, Backoff};
//! use agentscale_core::{Error, Output, Task, TaskQueue};
//!
//! struct Echo;
//!
//! #[async_trait::async_trait]
//! impl Handler for Echo {
//!     async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
//!         tracing::info!(kind = %task.kind, attempt = cx.attempt(), "working");
//!         Ok(Output::bytes(task.payload.clone()))
//!     }
//! }
//!
//! # async fn run(queue: Arc<dyn TaskQueue>) -> agentscale_core::Result<()> {
//! let worker = Worker::builder(queue, Echo)
//!     .concurrency(32)
//!     .backoff(Backoff::exponential(Duration::from_millis(100), Duration::from_secs(30)))
//!     .task_timeout(Duration::from_secs(300))
//!     .grace_period(Duration::from_secs(25))
//!     .build()?;
//! let report = worker.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! tracing::info!(?report, "worker stopped");
//! # Ok(()) }
//! ```
//!
//! # Guarantees and behaviour
//!
//! * **Backpressure.** The worker leases only as many tasks as it has free
//!   slots; a slot is freed only after the task's ack or nack completed. The
//!   queue's backlog therefore stays in the queue, where the autoscaler sees it.
//! * **Execution model.** A worker runs a few drivers
//!   ([`WorkerBuilder::shards`], default 1; raise it for handlers that do
//!   real CPU work between awaits). Over an in-process queue
//!   ([`Capabilities::in_process`](crate::Capabilities::in_process)) the
//!   first runs on the task that awaits [`Worker::run_until`] and the
//!   others are spawned; over a network queue all are spawned. Each leases for the
//!   shared slots and polls its handlers' futures itself, with no task spawn
//!   and no cross-thread wake-up per task, which keeps the runtime's overhead
//!   per task small. A task's future is polled once right after its lease; a
//!   handler that finishes then is queued for the ack at once (no allocation,
//!   no entry in the set of waiting futures), one that waits is polled from
//!   then on like any other. Handlers should be async (agent work waits on
//!   models and tools); move heavy CPU work to `tokio::task::spawn_blocking`.
//! * **Ack after completion.** A task is acked only after its handler returned
//!   `Ok`. Acks are batched ([`TaskQueue::ack_batch`]). An ack refused with
//!   [`Error::LeaseLost`] is counted and logged: the task runs again elsewhere
//!   (at-least-once; make handlers idempotent).
//! * **Failures.** A handler error that is not [`Error::is_retryable`]
//!   dead-letters the task at once with the error as reason. A retryable error,
//!   a panic (caught; its message goes into the reason) or the per-task timeout
//!   is a failed attempt: the task is nacked with [`Nack::Retry`](crate::Nack::Retry) and an
//!   exponential, jittered delay ([`Backoff`]) until the attempt number reaches
//!   the task's `max_attempts`, then dead-lettered with the reason and the
//!   attempt count. A panic never kills the worker.
//! * **Checks before running.** A delivery whose attempt number already exceeds
//!   `max_attempts` (redelivered after lost leases) or whose task `deadline`
//!   passed is dead-lettered without running.
//! * **Heartbeats.** While a handler runs, its lease is extended every
//!   `lease_timeout / 3` when the queue supports extension. If the queue
//!   refuses (the lease was lost), the handler is cancelled and its result
//!   abandoned: another worker owns the task now.
//! * **Graceful shutdown.** When the future given to [`Worker::run_until`]
//!   resolves, the worker stops leasing, lets in-flight tasks finish within the
//!   grace period, then cancels the rest and hands them back with
//!   [`Nack::Release`](crate::Nack::Release) (no attempt charged), flushes its acks and returns a
//!   [`WorkerReport`]. Pick a grace period shorter than Kubernetes'
//!   `terminationGracePeriodSeconds`.
//! * **Tracing.** Every task runs in an `agentscale.task` span with the task
//!   id, kind, session id, tenant, attempt and W3C `traceparent`.

mod backoff;
mod builder;
mod kinds;
mod limit;
mod live;
mod process;
mod shadow;
mod shard;
mod signal;
mod stats;

pub use backoff::Backoff;
pub use builder::WorkerBuilder;
pub use kinds::KindRouter;
pub use limit::LimitKeys;
pub use live::ConcurrencyHandle;
pub use shadow::SHADOW_HEADER;
pub use signal::shutdown_signal;
pub use stats::{WorkerReport, WorkerStats};

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::{watch, Notify};

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::orchestrate::Orchestrator;
use crate::output::Output;
use crate::queue::TaskQueue;
use crate::results::ResultStore;
use crate::task::Task;
use shard::{run_depth_sampler, run_shard};

/// The user's task logic.
///
/// Return `Ok(output)` when the task is done (the worker records the output
/// when it has a result store, then acks the task; [`Output::none`] when there
/// is nothing to return), an error that
/// is not [`Error::is_retryable`] (for example [`Error::invalid_input`]) to
/// dead-letter it at once, or a retryable one (for example
/// [`Error::handler`]) to have it retried with backoff.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Runs one attempt of `task`.
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error>;
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        (**self).handle(task, cx).await
    }
}

/// What a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    attempt: u32,
    max_attempts: u32,
    started: Instant,
    timeout: Duration,
    flags: Arc<RunFlags>,
    /// Set when this task's join was decided without it; only allocated for
    /// fan-out children on a worker with an orchestrator (nothing else can
    /// set it), so an ordinary task costs no allocation here.
    cancelled: Option<Arc<AtomicBool>>,
    shadow: bool,
}

impl TaskContext {
    /// A context outside any worker, for unit-testing a handler directly
    /// (the worker builds its own for every attempt).
    pub fn detached(attempt: u32, max_attempts: u32, timeout: Duration) -> Self {
        TaskContext {
            attempt,
            max_attempts,
            started: Instant::now(),
            timeout,
            flags: Arc::default(),
            cancelled: None,
            shadow: false,
        }
    }

    /// The attempt number of this delivery (1 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Attempts allowed before the task is dead-lettered.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// True when a failure of this attempt dead-letters the task.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }

    /// When this attempt started. For an attempt that began as soon as it
    /// was leased, this is when its lease call returned (one clock read per
    /// leased batch), at most the time the worker took to start the batch's
    /// earlier tasks before the handler's first poll.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// When the per-task timeout cancels this attempt.
    pub fn deadline(&self) -> Instant {
        self.started + self.timeout
    }

    /// Time left before the per-task timeout.
    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// True once the worker was asked to shut down: a long handler may
    /// checkpoint and return early (an error is retried later elsewhere).
    pub fn is_shutting_down(&self) -> bool {
        self.flags.draining.load(Ordering::Acquire)
    }

    /// True once this task's join was decided without it (a fan-out child
    /// whose siblings already settled the join, or whose deadline passed):
    /// its result will be ignored, so a long handler may stop early. Best
    /// effort; only set on workers with an
    /// [`orchestrator`](WorkerBuilder::orchestrator).
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.as_ref().is_some_and(|c| c.load(Ordering::Acquire))
    }
}

#[derive(Debug, Default)]
struct RunFlags {
    draining: AtomicBool,
    aborted: AtomicBool,
    abort: Notify,
}

#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    interval: Duration,
    extend_by: Duration,
}

struct Shared<H> {
    queue: Arc<dyn TaskQueue>,
    handler: H,
    stats: Arc<WorkerStats>,
    metrics: Option<Metrics>,
    backoff: Backoff,
    rng: backoff::JitterRng,
    task_timeout: Duration,
    heartbeat: Option<Heartbeat>,
    flags: Arc<RunFlags>,
    /// Free handler slots. A permit is taken before leasing and given back
    /// only after the task's ack or nack completed. Resizable while running
    /// ([`ConcurrencyHandle`]).
    slots: Arc<live::Slots>,
    name: String,
    results: Option<Arc<dyn ResultStore>>,
    orchestrator: Option<Arc<Orchestrator>>,
    /// How long failed acks are retried (half the lease timeout).
    ack_retry_budget: Duration,
    /// Rate limits and concurrency caps checked before a handler runs.
    limiters: Vec<limit::WorkerLimiter>,
}

/// N concurrent handlers over a [`TaskQueue`]. Build with
/// [`Worker::builder`], run with [`Worker::run_until`]. See the
/// [module docs](self) for the guarantees.
pub struct Worker<H> {
    shared: Arc<Shared<H>>,
    concurrency: usize,
    shards: usize,
    grace_period: Duration,
    poll_wait: Duration,
    ack_batch: usize,
    depth_poll_interval: Duration,
}

impl<H> fmt::Debug for Worker<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.shared.name)
            .field("queue", &self.shared.queue.name())
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Worker<H> {
    /// Starts configuring a worker that runs `handler` over `queue`.
    pub fn builder(queue: Arc<dyn TaskQueue>, handler: H) -> WorkerBuilder<H> {
        WorkerBuilder::new(queue, handler)
    }

    /// A live handle on this worker's counters (cheap to read from anywhere).
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.shared.stats.clone()
    }

    /// Runs until `shutdown` resolves, then drains (see the module docs) and
    /// returns what the worker did.
    ///
    /// Queue errors while leasing are logged and retried with backoff; they do
    /// not end the run.
    pub async fn run_until<F>(self, shutdown: F) -> Result<WorkerReport>
    where
        F: std::future::Future<Output = ()> + Send,
    {
        let Worker {
            shared,
            concurrency: _,
            shards,
            grace_period,
            poll_wait,
            ack_batch,
            depth_poll_interval,
        } = self;
        // The target now, which a ConcurrencyHandle may have changed since build().
        let concurrency = shared.slots.start();
        let sampler = shared.metrics.clone().map(|m| {
            m.worker_started(concurrency);
            tokio::spawn(run_depth_sampler(shared.queue.clone(), m, depth_poll_interval))
        });
        tracing::info!(worker = %shared.name, queue = shared.queue.name(), concurrency = concurrency, "worker started");

        let (stop_tx, stop_rx) = watch::channel(false);
        // Over an in-process queue the first driver runs on the task that
        // awaits this call, the others are spawned. Woken by an enqueue, a
        // spawned driver is scheduled on the enqueuing thread (Tokio's LIFO
        // slot, which no other thread may steal), so a producer and the
        // worker took turns on one core instead of running on two; a driver
        // polled here wakes where its caller runs, as a channel's consumer
        // does. Over a network queue every driver is spawned: there the
        // wake-ups come from the connection's task, and a spawned driver
        // runs right after it on the same thread.
        let inline = shared.queue.capabilities().in_process;
        let drivers: Vec<_> = (usize::from(inline)..shards)
            .map(|_| tokio::spawn(run_shard(shared.clone(), stop_rx.clone(), poll_wait, ack_batch)))
            .collect();
        let first =
            inline.then(|| Box::pin(run_shard(shared.clone(), stop_rx.clone(), poll_wait, ack_batch)));
        let control = async {
            shutdown.await;
            let _ = stop_tx.send(true);

            // Drain: stop leasing (done), wait for in-flight tasks within the grace
            // period, then cancel and release the rest.
            shared.flags.draining.store(true, Ordering::Release);
            if let Some(m) = &shared.metrics {
                m.worker_draining();
            }
            // Frozen from here: the slots add up to this target once every task
            // is settled (see live.rs).
            let concurrency = shared.slots.freeze();
            let all = concurrency as u32;
            let in_flight = shared.stats.snapshot().in_flight;
            tracing::info!(worker = %shared.name, in_flight, grace = ?grace_period, "worker draining");
            let drained = tokio::time::timeout(grace_period, shared.slots.acquire_many(all)).await;
            match drained {
                Ok(Ok(permits)) => permits.forget(),
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(
                        worker = %shared.name,
                        in_flight = shared.stats.snapshot().in_flight,
                        "grace period over: cancelling and releasing in-flight tasks"
                    );
                    shared.flags.aborted.store(true, Ordering::Release);
                    shared.flags.abort.notify_waiters();
                    if let Ok(permits) = shared.slots.acquire_many(all).await {
                        permits.forget();
                    }
                }
            }
        };
        match first {
            Some(first) => {
                futures::join!(first, control);
            }
            None => control.await,
        }
        // Every slot is back: every task was acked or nacked, and the drivers
        // have nothing left to do.
        for d in drivers {
            if let Err(e) = d.await {
                tracing::error!(worker = %shared.name, error = %e, "worker driver task failed");
            }
        }
        if let Some(s) = sampler {
            s.abort();
        }
        if let Some(m) = &shared.metrics {
            m.worker_stopped(concurrency);
        }
        let report = shared.stats.snapshot();
        shared.stats.notify();
        tracing::info!(worker = %shared.name, ?report, "worker stopped");
        Ok(report)
    }
}
