//! Live concurrency changes (`Worker::concurrency_handle`) observed by a
//! running worker over the real in-memory queue.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::worker::{Handler, TaskContext, Worker};
use agentscale_core::{Error, ErrorKind, Output, Task, TaskQueue};
use agentscale_queue::LocalQueue;
use agentscale_tests::unique_name;
use tokio::sync::{watch, Semaphore};

/// Holds every task until the test opens the gate for it.
struct Gate {
    gate: Semaphore,
    running: watch::Sender<usize>,
    started: AtomicU64,
    peak: AtomicUsize,
}

#[async_trait::async_trait]
impl Handler for Gate {
    async fn handle(&self, _task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.running.send_modify(|n| {
            *n += 1;
            self.peak.fetch_max(*n, Ordering::SeqCst);
        });
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|e| Error::handler(e.to_string()))?;
        permit.forget();
        self.running.send_modify(|n| *n -= 1);
        Ok(Output::none())
    }
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test]
async fn raising_and_lowering_concurrency_is_observed_by_the_running_worker() {
    let q = Arc::new(
        LocalQueue::builder(unique_name("live"))
            .lease_timeout(Duration::from_secs(30))
            .build()
            .expect("queue"),
    );
    let total = 30u64;
    for i in 0..total {
        q.enqueue(Task::new("gate", format!("{i}")))
            .await
            .expect("enqueue");
    }
    let probe = Arc::new(Gate {
        gate: Semaphore::new(0),
        running: watch::Sender::new(0),
        started: AtomicU64::new(0),
        peak: AtomicUsize::new(0),
    });
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(2)
        .poll_wait(Duration::from_millis(50))
        .build()
        .expect("worker");
    let handle = worker.concurrency_handle();
    let stats = worker.stats();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(worker.run_until(async {
        let _ = stop_rx.await;
    }));
    let mut running = probe.running.subscribe();

    within("2 running", running.wait_for(|n| *n == 2))
        .await
        .expect("open");
    assert_eq!(handle.get(), 2);

    // Raise: three more slots at once.
    assert_eq!(handle.set(5).expect("raise"), 2);
    within("5 running", running.wait_for(|n| *n == 5))
        .await
        .expect("open");
    assert_eq!(probe.started.load(Ordering::SeqCst), 5);
    assert_eq!(probe.peak.load(Ordering::SeqCst), 5);

    // Lower to 1 while 5 run: nothing is cancelled; the 4 surplus slots are
    // taken back as tasks finish.
    assert_eq!(handle.set(1).expect("lower"), 5);
    assert_eq!(handle.pending_reduction(), 4);
    probe.gate.add_permits(4);
    within("4 completed", stats.wait_until(|r| r.completed == 4)).await;
    assert_eq!(handle.pending_reduction(), 0);
    assert_eq!(
        probe.started.load(Ordering::SeqCst),
        5,
        "no task started while slots were owed"
    );
    assert_eq!(*running.borrow(), 1);

    // From here on, one at a time.
    probe.peak.store(1, Ordering::SeqCst);
    for n in 6..=9u64 {
        probe.gate.add_permits(1);
        within("next start", async {
            while probe.started.load(Ordering::SeqCst) < n {
                running.changed().await.expect("open");
            }
        })
        .await;
    }
    assert_eq!(
        probe.peak.load(Ordering::SeqCst),
        1,
        "ran more than the lowered concurrency"
    );

    // Raise again.
    handle.set(3).expect("raise");
    within("3 running", running.wait_for(|n| *n == 3))
        .await
        .expect("open");

    // Stop: open the gate for everything, drain.
    probe.gate.add_permits(1000);
    let _ = stop_tx.send(());
    let report = within("drain", run).await.expect("join").expect("run");
    assert_eq!(report.completed, probe.started.load(Ordering::SeqCst));
    let depth = q.depth().await.expect("depth");
    assert_eq!(
        depth.ready + depth.in_flight + report.completed,
        total,
        "nothing lost"
    );
    // After the drain the concurrency can no longer change.
    assert_eq!(handle.set(4).map_err(|e| e.kind()), Err(ErrorKind::Closed));
}

#[tokio::test]
async fn invalid_concurrency_is_refused_and_changes_nothing() {
    let q = Arc::new(LocalQueue::builder(unique_name("live")).build().expect("queue"));
    let probe = Arc::new(Gate {
        gate: Semaphore::new(0),
        running: watch::Sender::new(0),
        started: AtomicU64::new(0),
        peak: AtomicUsize::new(0),
    });
    let worker = Worker::builder(q, probe).concurrency(3).build().expect("worker");
    let handle = worker.concurrency_handle();
    assert_eq!(handle.set(0).map_err(|e| e.kind()), Err(ErrorKind::InvalidConfig));
    assert_eq!(
        handle.set(usize::MAX).map_err(|e| e.kind()),
        Err(ErrorKind::InvalidConfig)
    );
    assert_eq!(handle.get(), 3);
    // Before run: the new value is what the worker starts with.
    assert_eq!(handle.set(7).expect("set"), 3);
    assert_eq!(handle.get(), 7);
}
