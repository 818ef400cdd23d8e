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
//! * **Execution model.** A worker runs a few driver tasks
//!   ([`WorkerBuilder::shards`], default 1; raise it for handlers that do
//!   real CPU work between awaits). Each leases for the
//!   shared slots and polls its handlers' futures itself, with no task spawn
//!   and no cross-thread wake-up per task, which keeps the runtime's overhead
//!   per task small. Handlers should be async (agent work waits on models and
//!   tools); move heavy CPU work to `tokio::task::spawn_blocking`.
//! * **Ack after completion.** A task is acked only after its handler returned
//!   `Ok`. Acks are batched ([`TaskQueue::ack_batch`]). An ack refused with
//!   [`Error::LeaseLost`] is counted and logged: the task runs again elsewhere
//!   (at-least-once; make handlers idempotent).
//! * **Failures.** A handler error that is not [`Error::is_retryable`]
//!   dead-letters the task at once with the error as reason. A retryable error,
//!   a panic (caught; its message goes into the reason) or the per-task timeout
//!   is a failed attempt: the task is nacked with [`Nack::Retry`] and an
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
//!   [`Nack::Release`] (no attempt charged), flushes its acks and returns a
//!   [`WorkerReport`]. Pick a grace period shorter than Kubernetes'
//!   `terminationGracePeriodSeconds`.
//! * **Tracing.** Every task runs in an `agentscale.task` span with the task
//!   id, kind, session id, tenant, attempt and W3C `traceparent`.

mod backoff;
mod signal;
mod stats;

pub use backoff::Backoff;
pub use signal::shutdown_signal;
pub use stats::{WorkerReport, WorkerStats};

use std::any::Any;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use std::future::Future;
use std::pin::Pin;

use futures::future::OptionFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{watch, Notify, Semaphore};
use tracing::Instrument;

use crate::error::{Error, ErrorKind, Result};
use crate::metrics::{Metrics, Outcome};
use crate::orchestrate::{finish_result, Orchestrator, DEADLINE_KIND, HEADER_JOIN};
use crate::output::Output;
use crate::queue::{Lease, Nack, TaskQueue};
use crate::results::{ResultStore, TaskOutcome};
use crate::task::{now_ms, Task};

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
    cancelled: Arc<AtomicBool>,
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
            cancelled: Arc::default(),
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

    /// When this attempt started.
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
        self.cancelled.load(Ordering::Acquire)
    }
}

#[derive(Debug, Default)]
struct RunFlags {
    draining: AtomicBool,
    aborted: AtomicBool,
    abort: Notify,
}

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
    /// [`TaskContext::is_cancelled`] on running ones.
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
        if self.concurrency > Semaphore::MAX_PERMITS / 2 || self.concurrency > u32::MAX as usize {
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
                slots: Semaphore::new(self.concurrency),
                name,
                results,
                orchestrator: self.orchestrator,
                ack_retry_budget,
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
    /// only after the task's ack or nack completed.
    slots: Semaphore,
    name: String,
    results: Option<Arc<dyn ResultStore>>,
    orchestrator: Option<Arc<Orchestrator>>,
    /// How long failed acks are retried (half the lease timeout).
    ack_retry_budget: Duration,
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

/// How one attempt ended.
enum Attempt {
    Done(Output),
    Failed(Error),
    Panicked(String),
    TimedOut,
    LeaseLost(Error),
    Aborted,
}

impl<H: Handler> Worker<H> {
    /// Starts configuring a worker that runs `handler` over `queue`.
    pub fn builder(queue: Arc<dyn TaskQueue>, handler: H) -> WorkerBuilder<H> {
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
        }
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
            concurrency,
            shards,
            grace_period,
            poll_wait,
            ack_batch,
            depth_poll_interval,
        } = self;
        let sampler = shared.metrics.clone().map(|m| {
            m.worker_started(concurrency);
            tokio::spawn(run_depth_sampler(shared.queue.clone(), m, depth_poll_interval))
        });
        tracing::info!(worker = %shared.name, queue = shared.queue.name(), concurrency = concurrency, "worker started");

        let (stop_tx, stop_rx) = watch::channel(false);
        let drivers: Vec<_> = (0..shards)
            .map(|_| tokio::spawn(run_shard(shared.clone(), stop_rx.clone(), poll_wait, ack_batch)))
            .collect();
        shutdown.await;
        let _ = stop_tx.send(true);

        // Drain: stop leasing (done), wait for in-flight tasks within the grace
        // period, then cancel and release the rest.
        shared.flags.draining.store(true, Ordering::Release);
        if let Some(m) = &shared.metrics {
            m.worker_draining();
        }
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

type LeaseCall = Pin<Box<dyn Future<Output = (usize, Result<Vec<Lease>>)> + Send>>;
type AckCall = Pin<Box<dyn Future<Output = (Vec<Lease>, Vec<Result<()>>)> + Send>>;

/// One driver: leases for free slots, polls its tasks' futures and acks their
/// completions in batches. Handlers of one driver share a thread (no spawn and
/// no cross-thread wake-up per task); a worker runs several drivers to use
/// several cores. Lease and ack calls run concurrently with the handlers.
async fn run_shard<H: Handler>(
    shared: Arc<Shared<H>>,
    mut stop: watch::Receiver<bool>,
    poll_wait: Duration,
    ack_batch: usize,
) {
    let shared = &*shared;
    let mut running = FuturesUnordered::new();
    let mut lease_call: Option<LeaseCall> = None;
    let mut ack_call: Option<AckCall> = None;
    let mut to_ack: Vec<Lease> = Vec::with_capacity(ack_batch);
    let mut spare: Vec<Lease> = Vec::with_capacity(ack_batch);
    let mut pause: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut error_delay = Duration::from_millis(50);
    let mut held = 0usize;
    let mut stopping = *stop.borrow();
    loop {
        // Checked before any new lease: completions can free slots in the
        // same wake-up that carries the stop signal.
        if !stopping && *stop.borrow() {
            stopping = true;
        }
        if ack_call.is_none() && !to_ack.is_empty() {
            let batch = std::mem::replace(&mut to_ack, std::mem::take(&mut spare));
            let (queue, stats, budget) = (
                shared.queue.clone(),
                shared.stats.clone(),
                shared.ack_retry_budget,
            );
            ack_call = Some(Box::pin(async move {
                let results = ack_with_retry(&*queue, &batch, budget, &stats).await;
                (batch, results)
            }));
        }
        if !stopping && lease_call.is_none() && pause.is_none() {
            let free = shared.slots.available_permits();
            if free > 0 {
                if let Ok(p) = shared.slots.try_acquire_many(free as u32) {
                    p.forget();
                    held += free;
                }
            }
            if held > 0 {
                let (want, queue) = (held, shared.queue.clone());
                held = 0;
                // A lease call in progress is never cancelled (that could strand
                // deliveries until their lease expires); shutdown waits for it.
                lease_call = Some(Box::pin(
                    async move { (want, queue.lease(want, poll_wait).await) },
                ));
            }
        }
        if stopping && lease_call.is_none() && ack_call.is_none() && running.is_empty() && to_ack.is_empty() {
            if held > 0 {
                shared.slots.add_permits(held);
            }
            return;
        }
        let waiting_for_slot = !stopping && lease_call.is_none() && pause.is_none();
        tokio::select! {
            biased;
            Some(done) = running.next(), if !running.is_empty() => {
                to_ack.extend(done);
                // Collect every completion that is ready, so acks go in batches.
                while to_ack.len() < ack_batch {
                    match running.next().now_or_never() {
                        Some(Some(done)) => to_ack.extend(done),
                        _ => break,
                    }
                }
            }
            Some((mut batch, results)) = OptionFuture::from(ack_call.as_mut()), if ack_call.is_some() => {
                ack_call = None;
                settle_acks(shared, &batch, &results);
                batch.clear();
                spare = batch;
            }
            Some((want, leased)) = OptionFuture::from(lease_call.as_mut()), if lease_call.is_some() => {
                lease_call = None;
                match leased {
                    Ok(leases) => {
                        error_delay = Duration::from_millis(50);
                        let got = leases.len();
                        if got < want {
                            shared.slots.add_permits(want - got);
                        }
                        if got > 0 {
                            shared.stats.add(&shared.stats.leased, got as u64);
                            shared.stats.add(&shared.stats.in_flight, got as u64);
                            if let Some(m) = &shared.metrics {
                                m.add_busy(got as i64);
                            }
                            for lease in leases {
                                running.push(process(shared, lease));
                            }
                        }
                    }
                    Err(e) => {
                        shared.slots.add_permits(want);
                        shared.stats.add(&shared.stats.queue_errors, 1);
                        tracing::warn!(worker = %shared.name, error = %e, retry_in = ?error_delay, "lease failed");
                        pause = Some(Box::pin(tokio::time::sleep(error_delay)));
                        error_delay = (error_delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            Some(()) = OptionFuture::from(pause.as_mut()), if pause.is_some() => pause = None,
            p = shared.slots.acquire(), if waiting_for_slot => {
                if let Ok(p) = p {
                    p.forget();
                    held += 1;
                }
            }
            _ = stop.changed(), if !stopping => stopping = true,
        }
    }
}

/// Acks `batch`, retrying the acks that failed with a retryable error (not a
/// lost lease) with backoff for up to `budget`, so a transient queue fault
/// does not make finished tasks run again once their leases expire.
async fn ack_with_retry(
    queue: &dyn TaskQueue,
    batch: &[Lease],
    budget: Duration,
    stats: &WorkerStats,
) -> Vec<Result<()>> {
    let mut results = queue.ack_batch(batch).await;
    results.truncate(batch.len());
    while results.len() < batch.len() {
        results.push(Err(Error::Backend {
            message: "ack_batch returned too few results".into(),
            source: None,
        }));
    }
    let give_up = Instant::now() + budget;
    let mut delay = Duration::from_millis(20);
    loop {
        let failed: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if e.is_retryable() && e.kind() != ErrorKind::LeaseLost))
            .map(|(i, _)| i)
            .collect();
        if failed.is_empty() || Instant::now() + delay > give_up {
            return results;
        }
        tracing::debug!(failed = failed.len(), retry_in = ?delay, "ack failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(1));
        stats.add(&stats.ack_retries, 1);
        let retry: Vec<Lease> = failed.iter().map(|&i| batch[i].clone()).collect();
        let mut again = queue.ack_batch(&retry).await.into_iter();
        for &i in &failed {
            results[i] = again.next().unwrap_or_else(|| {
                Err(Error::Backend {
                    message: "ack_batch returned too few results".into(),
                    source: None,
                })
            });
        }
    }
}

/// Counts the results of one `ack_batch` call and frees the batch's slots.
fn settle_acks<H>(shared: &Shared<H>, batch: &[Lease], results: &[Result<()>]) {
    let mut ok = 0u64;
    for (i, lease) in batch.iter().enumerate() {
        match results.get(i) {
            Some(Ok(())) => ok += 1,
            Some(Err(e)) => record_ack_error(shared, lease, e),
            None => record_ack_error(
                shared,
                lease,
                &Error::Backend {
                    message: "ack_batch returned too few results".into(),
                    source: None,
                },
            ),
        }
    }
    let n = batch.len();
    shared.stats.add(&shared.stats.completed, ok);
    shared.stats.in_flight.fetch_sub(n as u64, Ordering::AcqRel);
    if let Some(m) = &shared.metrics {
        m.record_outcomes(Outcome::Completed, ok);
        m.add_busy(-(n as i64));
    }
    shared.slots.add_permits(n);
    shared.stats.notify();
}

/// Frees the slot of a task whose nack (or abandonment) is done.
fn release_slot<H>(shared: &Shared<H>) {
    shared.stats.in_flight.fetch_sub(1, Ordering::AcqRel);
    if let Some(m) = &shared.metrics {
        m.add_busy(-1);
    }
    shared.slots.add_permits(1);
    shared.stats.notify();
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs one lease to its end: returns it when it must be acked; nacks or
/// abandons it otherwise.
async fn process<H: Handler>(shared: &Shared<H>, lease: Lease) -> Option<Lease> {
    let task = lease.task();
    let span = tracing::info_span!(
        "agentscale.task",
        task.id = %task.id,
        task.kind = %task.kind,
        session.id = task.session_id.as_deref(),
        tenant = task.tenant.as_deref(),
        attempt = lease.attempt(),
        traceparent = task.traceparent.as_deref(),
    );
    process_in_span(shared, lease).instrument(span).await
}

async fn process_in_span<H: Handler>(shared: &Shared<H>, lease: Lease) -> Option<Lease> {
    let task = lease.task();
    let attempt = lease.attempt();
    if attempt > task.max_attempts {
        let reason = format!(
            "delivered {attempt} times, more than max_attempts {} (leases lost or workers crashed)",
            task.max_attempts
        );
        return Box::pin(dead_letter(shared, &lease, reason, false)).await;
    }
    if let Some(deadline) = task.deadline_ms {
        let now = now_ms();
        // At the deadline is already too late: the task must finish by then.
        if now >= deadline {
            let reason = format!(
                "deadline passed {} ms before attempt {attempt} could start",
                now - deadline
            );
            return Box::pin(dead_letter(shared, &lease, reason, true)).await;
        }
    }
    if let Some(orch) = &shared.orchestrator {
        if task.kind == DEADLINE_KIND {
            return Box::pin(run_deadline(shared, orch, lease)).await;
        }
        if task.headers.contains_key(HEADER_JOIN) {
            match orch.is_cancelled(task, attempt).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::debug!("join already decided; skipping the child");
                    let outcome = TaskOutcome::Cancelled("its join was decided before it ran".into());
                    return Box::pin(finish_then_ack(shared, lease, outcome, attempt)).await;
                }
                Err(e) => tracing::warn!(error = %e, "join state unavailable; running the child anyway"),
            }
        }
    }

    let started = Instant::now();
    let cx = TaskContext {
        attempt,
        max_attempts: task.max_attempts,
        started,
        timeout: shared.task_timeout,
        flags: shared.flags.clone(),
        cancelled: Arc::default(),
    };
    let outcome = run_attempt(shared, &lease, &cx).await;
    if let Some(m) = &shared.metrics {
        m.observe_duration(started.elapsed());
    }
    let error = match outcome {
        Attempt::Done(output) => {
            if output.is_deferred() || shared.results.is_none() {
                return Some(lease);
            }
            return Box::pin(finish_then_ack(
                shared,
                lease,
                TaskOutcome::Completed(output),
                attempt,
            ))
            .await;
        }
        Attempt::Aborted => {
            tracing::info!("cancelled at shutdown; releasing the task uncharged");
            return Box::pin(settle(shared, &lease, Nack::Release)).await;
        }
        Attempt::LeaseLost(e) => {
            tracing::warn!(error = %e, "heartbeat refused: lease lost; abandoning this attempt");
            count_lease_lost(shared);
            release_slot(shared);
            return None;
        }
        Attempt::Failed(e) => e,
        Attempt::Panicked(msg) => {
            shared.stats.add(&shared.stats.panicked, 1);
            if let Some(m) = &shared.metrics {
                m.record_outcome(Outcome::Panicked);
            }
            Error::Handler(format!("handler panicked: {msg}"))
        }
        Attempt::TimedOut => {
            shared.stats.add(&shared.stats.timed_out, 1);
            if let Some(m) = &shared.metrics {
                m.record_outcome(Outcome::TimedOut);
            }
            Error::Timeout(format!(
                "handler exceeded the task timeout of {:?}",
                shared.task_timeout
            ))
        }
    };
    let nack = if !error.is_retryable() {
        Nack::DeadLetter(format!("non-retryable failure on attempt {attempt}: {error}"))
    } else if attempt >= task.max_attempts {
        Nack::DeadLetter(format!(
            "failed {attempt} of {} attempts; last error: {error}",
            task.max_attempts
        ))
    } else {
        let delay = shared.backoff.delay(attempt, shared.rng.next_u64());
        tracing::debug!(error = %error, retry_in = ?delay, "attempt failed; retrying later");
        Nack::Retry(delay)
    };
    // Boxed: the failure path is cold, and this keeps the per-task future small.
    match nack {
        Nack::DeadLetter(reason) => Box::pin(dead_letter(shared, &lease, reason, false)).await,
        other => Box::pin(settle(shared, &lease, other)).await,
    }
}

/// Records a terminal state (and reports it to the task's join), then hands
/// the lease back for acking. An oversize output dead-letters the task with
/// that reason; any other recording failure is a failed attempt.
async fn finish_then_ack<H>(
    shared: &Shared<H>,
    lease: Lease,
    outcome: TaskOutcome,
    attempt: u32,
) -> Option<Lease> {
    match finish(shared, lease.task(), outcome).await {
        Ok(()) => Some(lease),
        Err(Error::Codec(crate::error::CodecError::TooLarge { size, limit })) => {
            let reason = format!("output of {size} bytes exceeds the result limit of {limit} bytes");
            dead_letter(shared, &lease, reason, false).await
        }
        Err(e) => {
            let task = lease.task();
            let nack = if attempt >= task.max_attempts {
                Nack::DeadLetter(format!("could not record the result on the last attempt: {e}"))
            } else {
                tracing::warn!(error = %e, "recording the result failed; retrying the task");
                Nack::Retry(shared.backoff.delay(attempt, shared.rng.next_u64()))
            };
            match nack {
                Nack::DeadLetter(reason) => dead_letter(shared, &lease, reason, false).await,
                other => settle(shared, &lease, other).await,
            }
        }
    }
}

/// Records the terminal state through the orchestrator or the result store.
async fn finish<H>(shared: &Shared<H>, task: &Task, outcome: TaskOutcome) -> Result<()> {
    match (&shared.orchestrator, &shared.results) {
        (Some(o), _) => o.finish(task, outcome).await,
        (None, Some(r)) => finish_result(&**r, task, &outcome).await,
        (None, None) => Ok(()),
    }
}

/// Dead-letters a task after recording its terminal state (dead-lettered, or
/// expired when `expired`). If the record fails the task is left leased: it
/// is redelivered after the lease expires and dead-lettered again then, so
/// its result and its join report are never lost.
async fn dead_letter<H>(shared: &Shared<H>, lease: &Lease, reason: String, expired: bool) -> Option<Lease> {
    if shared.results.is_some() {
        let outcome = if expired {
            TaskOutcome::Expired(reason.clone())
        } else {
            TaskOutcome::DeadLettered(reason.clone())
        };
        if let Err(e) = finish(shared, lease.task(), outcome).await {
            shared.stats.add(&shared.stats.queue_errors, 1);
            tracing::warn!(error = %e, "recording a dead letter failed; leaving the task to be redelivered");
            release_slot(shared);
            return None;
        }
    }
    settle(shared, lease, Nack::DeadLetter(reason)).await
}

/// Handles a join's deadline task: decides the join if still open and
/// re-drives its continuation.
async fn run_deadline<H>(shared: &Shared<H>, orch: &Orchestrator, lease: Lease) -> Option<Lease> {
    match orch.on_deadline(lease.task()).await {
        Ok(None) => Some(lease),
        Ok(Some(early)) => settle(shared, &lease, Nack::Retry(early)).await,
        Err(e) => {
            tracing::warn!(error = %e, "join deadline could not be applied; retrying");
            let delay = shared.backoff.delay(lease.attempt(), shared.rng.next_u64());
            settle(shared, &lease, Nack::Retry(delay)).await
        }
    }
}

/// Runs the handler with the timeout, panic catching, heartbeats and the
/// shutdown abort.
async fn run_attempt<H: Handler>(shared: &Shared<H>, lease: &Lease, cx: &TaskContext) -> Attempt {
    // Created before the flag check: `notify_waiters` reaches it even unpolled.
    let abort = shared.flags.abort.notified();
    if shared.flags.aborted.load(Ordering::Acquire) {
        return Attempt::Aborted;
    }
    let mut handler =
        std::pin::pin!(AssertUnwindSafe(shared.handler.handle(lease.task(), cx)).catch_unwind());
    // Fast path: a handler that finishes on its first poll needs no timer.
    if let std::task::Poll::Ready(r) = futures::poll!(handler.as_mut()) {
        return match r {
            Ok(Ok(out)) => Attempt::Done(out),
            Ok(Err(e)) => Attempt::Failed(e),
            Err(panic) => Attempt::Panicked(panic_message(&*panic)),
        };
    }
    let run = tokio::time::timeout(shared.task_timeout, handler);
    let heartbeat = async {
        match shared.heartbeat {
            Some(hb) => heartbeat_until_lost(&*shared.queue, lease, hb).await,
            None => futures::future::pending().await,
        }
    };
    // A fan-out child learns when its join is decided without it.
    let cancel_watch = async {
        if let (Some(orch), Some(join)) = (&shared.orchestrator, lease.task().headers.get(HEADER_JOIN)) {
            let join = crate::join::JoinId::new(join.clone());
            if let Ok(true) = orch.joins().wait_decided(&join, shared.task_timeout).await {
                cx.cancelled.store(true, Ordering::Release);
            }
        }
        futures::future::pending::<()>().await
    };
    // Biased: a handler that is ready at once never arms the heartbeat timer.
    tokio::select! {
        biased;
        r = run => match r {
            Ok(Ok(Ok(out))) => Attempt::Done(out),
            Ok(Ok(Err(e))) => Attempt::Failed(e),
            Ok(Err(panic)) => Attempt::Panicked(panic_message(&*panic)),
            Err(_) => Attempt::TimedOut,
        },
        e = heartbeat => Attempt::LeaseLost(e),
        _ = cancel_watch => Attempt::Aborted,
        _ = abort => Attempt::Aborted,
    }
}

/// Extends the lease every interval; returns only when the queue says the
/// lease is lost. Other extension errors are logged and retried next beat.
async fn heartbeat_until_lost(queue: &dyn TaskQueue, lease: &Lease, hb: Heartbeat) -> Error {
    let mut next = tokio::time::Instant::now() + hb.interval;
    loop {
        tokio::time::sleep_until(next).await;
        next += hb.interval;
        match queue.extend(lease, hb.extend_by).await {
            Ok(()) => tracing::trace!("lease extended"),
            Err(e) if e.kind() == ErrorKind::LeaseLost => return e,
            Err(e) => tracing::warn!(error = %e, "lease extension failed; retrying at the next heartbeat"),
        }
    }
}

fn count_lease_lost<H>(shared: &Shared<H>) {
    shared.stats.add(&shared.stats.lease_lost, 1);
    if let Some(m) = &shared.metrics {
        m.record_outcome(Outcome::LeaseLost);
    }
}

fn record_ack_error<H>(shared: &Shared<H>, lease: &Lease, e: &Error) {
    if e.kind() == ErrorKind::LeaseLost {
        count_lease_lost(shared);
        tracing::warn!(task.id = %lease.task().id, error = %e, "ack refused: lease lost; the task runs again elsewhere");
    } else {
        shared.stats.add(&shared.stats.queue_errors, 1);
        tracing::warn!(task.id = %lease.task().id, error = %e, "ack failed; the task is redelivered after its lease expires");
    }
}

/// Nacks one lease, counts the outcome, frees the slot.
async fn settle<H>(shared: &Shared<H>, lease: &Lease, nack: Nack) -> Option<Lease> {
    let (counter, outcome) = match &nack {
        Nack::Retry(_) => (&shared.stats.retried, Outcome::Retried),
        Nack::Release => (&shared.stats.released, Outcome::Released),
        Nack::DeadLetter(reason) => {
            tracing::warn!(reason = %reason, "dead-lettering task");
            (&shared.stats.dead_lettered, Outcome::DeadLettered)
        }
    };
    match shared.queue.nack(lease, nack).await {
        Ok(()) => {
            shared.stats.add(counter, 1);
            if let Some(m) = &shared.metrics {
                m.record_outcome(outcome);
            }
        }
        Err(e) if e.kind() == ErrorKind::LeaseLost => {
            tracing::warn!(error = %e, "nack refused: lease lost; the task runs again elsewhere");
            count_lease_lost(shared);
        }
        Err(e) => {
            shared.stats.add(&shared.stats.queue_errors, 1);
            tracing::warn!(error = %e, "nack failed; the task is redelivered after its lease expires");
        }
    }
    release_slot(shared);
    None
}

/// Polls the queue depth into the metrics every `interval`.
async fn run_depth_sampler(queue: Arc<dyn TaskQueue>, metrics: Metrics, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match queue.depth().await {
            Ok(depth) => metrics.record_depth(queue.name(), &depth),
            Err(e) => {
                metrics.record_depth_error();
                tracing::warn!(queue = queue.name(), error = %e, "queue depth poll failed");
            }
        }
    }
}
