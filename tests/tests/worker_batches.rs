//! The worker's ack batching over the real in-memory queue: tasks whose
//! handler finishes at its first poll (acked without entering the set of
//! waiting futures) mixed with tasks that wait. Every ack comes after its
//! handler finished, no `ack_batch` call is larger than the configured
//! batch, and every task runs once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentscale_core::worker::{Handler, TaskContext, Worker};
use agentscale_core::{Error, Lease, Output, Task, TaskId, TaskQueue};
use agentscale_queue::LocalQueue;
use agentscale_tests::unique_name;

/// Odd-numbered tasks finish at once; even-numbered ones wait first (a
/// yield, or a short sleep for every fourth).
#[derive(Debug, Default)]
struct Mixed {
    finished: Mutex<HashSet<TaskId>>,
    runs: Mutex<HashMap<TaskId, u32>>,
}

#[async_trait::async_trait]
impl Handler for Mixed {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        *self
            .runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.id.clone())
            .or_default() += 1;
        let i: u64 = std::str::from_utf8(&task.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        if i.is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        } else if i.is_multiple_of(2) {
            tokio::task::yield_now().await;
        }
        self.finished
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(task.id.clone());
        Ok(Output::none())
    }
}

/// The real local queue, recording the largest `ack_batch` call and every
/// lease acked before its handler finished.
#[derive(Debug)]
struct Recording {
    inner: LocalQueue,
    handler: Arc<Mixed>,
    largest_batch: AtomicUsize,
    acked_early: AtomicU64,
}

#[async_trait::async_trait]
impl TaskQueue for Recording {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> agentscale_core::Capabilities {
        self.inner.capabilities()
    }
    async fn enqueue(&self, task: Task) -> agentscale_core::Result<agentscale_core::Enqueued> {
        self.inner.enqueue(task).await
    }
    async fn lease(&self, max: usize, wait: Duration) -> agentscale_core::Result<Vec<Lease>> {
        self.inner.lease(max, wait).await
    }
    async fn ack(&self, lease: &Lease) -> agentscale_core::Result<()> {
        self.ack_batch(std::slice::from_ref(lease))
            .await
            .pop()
            .unwrap_or(Ok(()))
    }
    async fn ack_batch(&self, leases: &[Lease]) -> Vec<agentscale_core::Result<()>> {
        self.largest_batch.fetch_max(leases.len(), Ordering::SeqCst);
        {
            let finished = self.handler.finished.lock().unwrap_or_else(|e| e.into_inner());
            let early = leases.iter().filter(|l| !finished.contains(&l.task().id)).count();
            self.acked_early.fetch_add(early as u64, Ordering::SeqCst);
        }
        self.inner.ack_batch(leases).await
    }
    async fn nack(&self, lease: &Lease, nack: agentscale_core::Nack) -> agentscale_core::Result<()> {
        self.inner.nack(lease, nack).await
    }
    async fn extend(&self, lease: &Lease, by: Duration) -> agentscale_core::Result<()> {
        self.inner.extend(lease, by).await
    }
    async fn depth(&self) -> agentscale_core::Result<agentscale_core::Depth> {
        self.inner.depth().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_follow_handlers_in_bounded_batches() {
    const N: u64 = 400;
    const ACK_BATCH: usize = 5;
    let handler = Arc::new(Mixed::default());
    let queue = Arc::new(Recording {
        inner: LocalQueue::new(unique_name("worker-batches")),
        handler: handler.clone(),
        largest_batch: AtomicUsize::new(0),
        acked_early: AtomicU64::new(0),
    });
    let tasks: Vec<Task> = (0..N).map(|i| Task::new("mixed", i.to_string())).collect();
    let ids: Vec<TaskId> = tasks.iter().map(|t| t.id.clone()).collect();
    for r in queue.inner.enqueue_batch(tasks).await {
        r.expect("enqueue");
    }
    // 32 slots with batches of 5: one lease hands out more tasks that finish
    // at their first poll than one ack call may carry.
    let worker = Worker::builder(queue.clone(), handler.clone())
        .concurrency(32)
        .ack_batch(ACK_BATCH)
        .poll_wait(Duration::from_millis(20))
        .build()
        .expect("build");
    let stats = worker.stats();
    let probe = worker.stats();
    // A hang guard, not a speed check.
    let report = tokio::time::timeout(
        Duration::from_secs(120),
        worker.run_until(async move {
            stats.wait_until(|r| r.completed >= N).await;
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("not drained in 120 s; counters: {:?}", probe.snapshot()))
    .expect("worker run");
    assert_eq!(
        (report.completed, report.queue_errors, report.lease_lost),
        (N, 0, 0)
    );
    assert_eq!(
        queue.acked_early.load(Ordering::SeqCst),
        0,
        "a task was acked before its handler finished"
    );
    let largest = queue.largest_batch.load(Ordering::SeqCst);
    assert!(
        (1..=ACK_BATCH).contains(&largest),
        "largest ack_batch call {largest}, configured {ACK_BATCH}"
    );
    let depth = queue.depth().await.expect("depth");
    assert_eq!(
        (depth.ready, depth.in_flight, depth.delayed, depth.dead),
        (0, 0, 0, 0)
    );
    let runs = handler.runs.lock().unwrap_or_else(|e| e.into_inner());
    for id in &ids {
        assert_eq!(runs.get(id), Some(&1), "task {id} ran other than once");
    }
}
