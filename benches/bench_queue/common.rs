//! Code every backend of the queue benchmark reuses: no-op tasks and handler,
//! running a [`Worker`] until a known number of tasks is acked, the raw
//! `tokio::sync::mpsc` baseline, and the output format.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::worker::{Handler, TaskContext, Worker, WorkerReport};
use agentscale_core::{Error, Output, Result, Task, TaskQueue};
use bytes::Bytes;

/// A handler that does nothing: the benchmark measures the runtime and queue.
#[derive(Debug, Clone, Copy)]
pub struct NoopHandler;

#[async_trait::async_trait]
impl Handler for NoopHandler {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        std::hint::black_box(task.payload.len());
        Ok(Output::none())
    }
}

/// `n` no-op tasks, created the way a producer creates them.
pub fn noop_tasks(n: usize) -> Vec<Task> {
    (0..n)
        .map(|_| Task::new("noop", Bytes::from_static(b"{}")))
        .collect()
}

/// Enqueues `tasks` in batches of `batch` (one `enqueue_batch` call each);
/// fails on the first refused task.
pub async fn enqueue_all(queue: &dyn TaskQueue, tasks: Vec<Task>, batch: usize) -> Result<()> {
    let mut tasks = tasks.into_iter().peekable();
    while tasks.peek().is_some() {
        let chunk: Vec<Task> = tasks.by_ref().take(batch).collect();
        for r in queue.enqueue_batch(chunk).await {
            r?;
        }
    }
    Ok(())
}

/// Runs a [`Worker`] with `concurrency` slots and the no-op handler over
/// `queue` until `n_tasks` tasks were acked, then shuts it down. Returns the
/// time from the worker's start until the last ack, and its report.
pub async fn run_worker_until_drained(
    queue: Arc<dyn TaskQueue>,
    n_tasks: u64,
    concurrency: usize,
) -> Result<(Duration, WorkerReport)> {
    let mut builder = Worker::builder(queue, NoopHandler)
        .concurrency(concurrency)
        .poll_wait(Duration::from_millis(100))
        .grace_period(Duration::from_secs(30));
    if let Some(n) = std::env::var("BENCH_SHARDS").ok().and_then(|v| v.parse().ok()) {
        builder = builder.shards(n);
    }
    let worker = builder.build()?;
    let stats = worker.stats();
    let started = Instant::now();
    // The shutdown condition is checked every millisecond rather than with
    // `WorkerStats::wait_until`: a waiter would be woken from another thread
    // after every ack batch, a cost that only this measurement adds (a
    // deployed worker has no such waiter). The clock stops when the condition
    // is seen (the last ack, at most 1 ms late), not when the worker returned:
    // the shutdown that follows waits for a lease call in progress (up to
    // `poll_wait`), which the baseline does not do either.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Instant>();
    let report = worker
        .run_until(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while stats.snapshot().completed < n_tasks {
                tick.tick().await;
            }
            let _ = done_tx.send(Instant::now());
        })
        .await?;
    let done = done_rx.await.unwrap_or_else(|_| Instant::now());
    Ok((done.duration_since(started), report))
}

/// End to end: a producer enqueues `tasks` (batches of `batch`) while the
/// worker runs; returns the time from the producer's start until every task
/// was acked.
pub async fn produce_and_drain(
    queue: Arc<dyn TaskQueue>,
    tasks: Vec<Task>,
    batch: usize,
    concurrency: usize,
) -> Result<(Duration, WorkerReport)> {
    let n = tasks.len() as u64;
    let started = Instant::now();
    let producer_queue = queue.clone();
    let producer = tokio::spawn(async move { enqueue_all(&*producer_queue, tasks, batch).await });
    let worker_start = started.elapsed();
    let (worker_elapsed, report) = run_worker_until_drained(queue, n, concurrency).await?;
    // From before the producer started until the last ack.
    let elapsed = worker_start + worker_elapsed;
    producer
        .await
        .map_err(|e| Error::backend("producer task failed", e))??;
    Ok((elapsed, report))
}

/// How the `tokio::sync::mpsc` baseline hands tasks over.
///
/// The RESULT baseline is [`MpscShape::FAIR`]: an unbounded channel (the
/// in-memory queue has no depth bound either, so its producer never waits
/// for the consumer) and a consumer that takes up to 100 tasks per
/// `recv_many` (a worker with 100 slots leases up to 100 per call). The
/// bounded, one-at-a-time shape (capacity 1024, `recv`) was the baseline
/// until 2026-12-01; it pays a producer wake-up per task that our side does
/// not, and is still printed beside it.
#[derive(Debug, Clone, Copy)]
pub struct MpscShape {
    /// Unbounded channel instead of capacity 1024.
    pub unbounded: bool,
    /// `recv_many(.., 100)` instead of `recv`.
    pub recv_many: bool,
}

impl MpscShape {
    /// The RESULT baseline: unbounded, `recv_many(.., 100)`.
    pub const FAIR: MpscShape = MpscShape {
        unbounded: true,
        recv_many: true,
    };
}

/// The baseline: the same tasks through a `tokio::sync::mpsc` channel of
/// the given shape to one consumer that runs the same handler. Returns the
/// time until the consumer handled the last task.
pub async fn mpsc_baseline(tasks: Vec<Task>, variant: MpscShape) -> Result<Duration> {
    let n = tasks.len();
    let (tx, mut rx) = if variant.unbounded {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Task>();
        (Sender::Unbounded(tx), Receiver::Unbounded(rx))
    } else {
        let (tx, rx) = tokio::sync::mpsc::channel::<Task>(1024);
        (Sender::Bounded(tx), Receiver::Bounded(rx))
    };
    let started = Instant::now();
    let producer = tokio::spawn(async move {
        for t in tasks {
            let sent = match &tx {
                Sender::Bounded(tx) => tx.send(t).await.is_ok(),
                Sender::Unbounded(tx) => tx.send(t).is_ok(),
            };
            if !sent {
                break;
            }
        }
    });
    let handler = NoopHandler;
    let cx = TaskContext::detached(1, 5, Duration::from_secs(600));
    let mut handled = 0usize;
    let mut buf = Vec::with_capacity(100);
    loop {
        if variant.recv_many {
            let got = match &mut rx {
                Receiver::Bounded(rx) => rx.recv_many(&mut buf, 100).await,
                Receiver::Unbounded(rx) => rx.recv_many(&mut buf, 100).await,
            };
            if got == 0 {
                break;
            }
            for task in buf.drain(..) {
                handler.handle(&task, &cx).await?;
                handled += 1;
            }
        } else {
            let task = match &mut rx {
                Receiver::Bounded(rx) => rx.recv().await,
                Receiver::Unbounded(rx) => rx.recv().await,
            };
            let Some(task) = task else { break };
            handler.handle(&task, &cx).await?;
            handled += 1;
        }
    }
    let elapsed = started.elapsed();
    producer
        .await
        .map_err(|e| Error::backend("producer task failed", e))?;
    if handled != n {
        return Err(Error::Handler(format!("baseline handled {handled} of {n} tasks")));
    }
    Ok(elapsed)
}

enum Sender {
    Bounded(tokio::sync::mpsc::Sender<Task>),
    Unbounded(tokio::sync::mpsc::UnboundedSender<Task>),
}

enum Receiver {
    Bounded(tokio::sync::mpsc::Receiver<Task>),
    Unbounded(tokio::sync::mpsc::UnboundedReceiver<Task>),
}

/// Tasks per second.
pub fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// The median of some measurements.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

/// Prints one `RESULT` line (the last lines of the benchmark's output).
pub fn result_line(name: &str, ours: f64, baseline_name: &str, baseline: f64) {
    let ratio = if baseline > 0.0 { ours / baseline } else { 0.0 };
    println!("RESULT {name} ours={ours:.0} baseline={baseline_name}:{baseline:.0} ratio={ratio:.3}");
}
