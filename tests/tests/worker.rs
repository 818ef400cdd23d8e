//! Behaviour of the worker runtime (`agentscale_core::worker`) over the real
//! in-memory queue, and the metrics/health exporter over real HTTP.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agentscale_core::metrics::{Exporter, Metrics};
use agentscale_core::worker::{Backoff, Handler, TaskContext, Worker, WorkerReport};
use agentscale_core::{Error, ErrorKind, Output, Task, TaskId, TaskQueue};
use agentscale_queue::LocalQueue;
use agentscale_tests::unique_name;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, Semaphore};

/// Records every attempt it sees and behaves as `behave` says.
struct Probe<F> {
    seen: Mutex<HashMap<TaskId, Vec<u32>>>,
    started: AtomicU64,
    changed: Notify,
    behave: F,
}

impl<F> Probe<F> {
    fn new(behave: F) -> Arc<Self> {
        Arc::new(Probe {
            seen: Mutex::new(HashMap::new()),
            started: AtomicU64::new(0),
            changed: Notify::new(),
            behave,
        })
    }

    async fn wait_started(&self, n: u64) {
        loop {
            let changed = self.changed.notified();
            if self.started.load(Ordering::SeqCst) >= n {
                return;
            }
            changed.await;
        }
    }

    fn attempts_of(&self, id: &TaskId) -> Vec<u32> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .unwrap_or_default()
    }
}

type BoxFut = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Error>> + Send>>;

#[async_trait::async_trait]
impl<F> Handler for Probe<F>
where
    F: Fn(&Task, u32) -> BoxFut + Send + Sync + 'static,
{
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(task.id.clone())
            .or_default()
            .push(cx.attempt());
        self.started.fetch_add(1, Ordering::SeqCst);
        self.changed.notify_waiters();
        (self.behave)(task, cx.attempt()).await.map(Output::from)
    }
}

fn ok() -> BoxFut {
    Box::pin(async { Ok(()) })
}

fn queue(lease_timeout: Duration) -> Arc<LocalQueue> {
    Arc::new(
        LocalQueue::builder(unique_name("worker"))
            .lease_timeout(lease_timeout)
            .build()
            .expect("queue"),
    )
}

async fn enqueue_n(q: &LocalQueue, n: usize, max_attempts: u32) -> Vec<TaskId> {
    let tasks: Vec<Task> = (0..n)
        .map(|i| Task::new("probe", format!("{{\"i\":{i}}}")).with_max_attempts(max_attempts))
        .collect();
    let ids = tasks.iter().map(|t| t.id.clone()).collect();
    for r in q.enqueue_batch(tasks).await {
        r.expect("enqueue");
    }
    ids
}

fn fast_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(1), Duration::from_millis(5))
}

/// Runs `worker` until `done` holds for its counters, then shuts it down.
async fn run_until_counts<H: Handler>(
    worker: Worker<H>,
    done: impl Fn(&WorkerReport) -> bool + Send + Sync + 'static,
) -> WorkerReport {
    let stats = worker.stats();
    let probe = worker.stats();
    // A hang guard, not a speed check: a condition never reached fails the
    // test with the counters instead of stalling the suite.
    tokio::time::timeout(
        Duration::from_secs(120),
        worker.run_until(async move {
            stats.wait_until(done).await;
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("condition not reached in 120 s; counters: {:?}", probe.snapshot()))
    .expect("worker run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completes_every_task_exactly_once() {
    let q = queue(Duration::from_secs(30));
    let ids = enqueue_n(&q, 300, 5).await;
    let probe = Probe::new(|_: &Task, _| ok());
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(8)
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.completed >= 300).await;
    assert_eq!(report.completed, 300);
    assert_eq!(report.leased, 300);
    assert_eq!(
        (
            report.retried,
            report.dead_lettered,
            report.lease_lost,
            report.in_flight
        ),
        (0, 0, 0, 0)
    );
    for id in &ids {
        assert_eq!(probe.attempts_of(id), vec![1], "task {id} ran other than once");
    }
    let depth = q.depth().await.expect("depth");
    assert_eq!(
        (depth.ready, depth.in_flight, depth.delayed, depth.dead),
        (0, 0, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_only_as_many_tasks_as_free_slots() {
    let q = queue(Duration::from_secs(30));
    enqueue_n(&q, 20, 5).await;
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let probe = Probe::new(move |_: &Task, _| {
        let g = g.clone();
        Box::pin(async move {
            g.acquire()
                .await
                .map_err(|_| Error::handler("gate closed"))?
                .forget();
            Ok(())
        }) as BoxFut
    });
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(4)
        .build()
        .expect("build");
    let stats = worker.stats();
    let run = tokio::spawn(worker.run_until({
        let stats = stats.clone();
        async move {
            stats.wait_until(|r| r.completed >= 20).await;
        }
    }));
    probe.wait_started(4).await;
    // All four slots are busy: the queue must still hold the other 16 as ready.
    let depth = q.depth().await.expect("depth");
    assert_eq!((depth.in_flight, depth.ready), (4, 16));
    assert_eq!(stats.snapshot().in_flight, 4);
    gate.add_permits(20);
    let report = run.await.expect("join").expect("run");
    assert_eq!(report.completed, 20);
    assert_eq!(probe.started.load(Ordering::SeqCst), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retryable_failures_are_retried_then_complete() {
    let q = queue(Duration::from_secs(30));
    let ids = enqueue_n(&q, 30, 5).await;
    let probe = Probe::new(|_: &Task, attempt| {
        Box::pin(async move {
            if attempt < 3 {
                Err(Error::handler(format!("transient failure on attempt {attempt}")))
            } else {
                Ok(())
            }
        }) as BoxFut
    });
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(8)
        .backoff(fast_backoff())
        .rng_seed(7)
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.completed >= 30).await;
    assert_eq!(
        (report.completed, report.retried, report.dead_lettered),
        (30, 60, 0)
    );
    for id in &ids {
        assert_eq!(probe.attempts_of(id), vec![1, 2, 3]);
    }
    assert_eq!(q.depth().await.expect("depth").backlog(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_errors_dead_letter_at_once_with_the_reason() {
    let q = queue(Duration::from_secs(30));
    let good = Task::json("probe", &serde_json::json!({"n": 1})).expect("task");
    let bad = Task::new("probe", "this is not json");
    let bad_id = bad.id.clone();
    q.enqueue(good).await.expect("enqueue");
    q.enqueue(bad).await.expect("enqueue");
    let probe = Probe::new(|task: &Task, _| {
        let parsed = task.payload_json::<serde_json::Value>().map(drop);
        Box::pin(async move { parsed }) as BoxFut
    });
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(2)
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.completed + r.dead_lettered >= 2).await;
    assert_eq!(
        (report.completed, report.dead_lettered, report.retried),
        (1, 1, 0)
    );
    assert_eq!(probe.attempts_of(&bad_id), vec![1]);
    let dead = q.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].task.as_ref().map(|t| t.id.clone()), Some(bad_id));
    assert!(
        dead[0].reason.contains("non-retryable"),
        "reason: {}",
        dead[0].reason
    );
    assert!(dead[0].reason.contains("not valid"), "reason: {}", dead[0].reason);
    assert_eq!(dead[0].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_after_max_attempts_with_attempt_count() {
    let q = queue(Duration::from_secs(30));
    let ids = enqueue_n(&q, 5, 3).await;
    let probe =
        Probe::new(|_: &Task, _| Box::pin(async { Err(Error::handler("model overloaded")) }) as BoxFut);
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(4)
        .backoff(fast_backoff())
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.dead_lettered >= 5).await;
    assert_eq!(
        (report.dead_lettered, report.retried, report.completed),
        (5, 10, 0)
    );
    for id in &ids {
        assert_eq!(probe.attempts_of(id), vec![1, 2, 3]);
    }
    let dead = q.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 5);
    for d in &dead {
        assert!(
            d.reason.contains("failed 3 of 3 attempts"),
            "reason: {}",
            d.reason
        );
        assert!(d.reason.contains("model overloaded"), "reason: {}", d.reason);
        assert_eq!(d.attempts, 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_is_a_failed_attempt_not_a_dead_worker() {
    let q = queue(Duration::from_secs(30));
    let doomed = Task::new("panic", "{}").with_max_attempts(2);
    let doomed_id = doomed.id.clone();
    q.enqueue(doomed).await.expect("enqueue");
    let ids = enqueue_n(&q, 20, 5).await;
    let probe = Probe::new(|task: &Task, attempt| {
        if task.kind == "panic" {
            panic!("boom on attempt {attempt}");
        }
        ok()
    });
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(3)
        .backoff(fast_backoff())
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.completed >= 20 && r.dead_lettered >= 1).await;
    assert_eq!(
        (
            report.completed,
            report.panicked,
            report.retried,
            report.dead_lettered
        ),
        (20, 2, 1, 1)
    );
    assert_eq!(probe.attempts_of(&doomed_id), vec![1, 2]);
    for id in &ids {
        assert_eq!(probe.attempts_of(id), vec![1]);
    }
    let dead = q.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].reason.contains("handler panicked: boom on attempt 2"),
        "reason: {}",
        dead[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_past_the_task_timeout_fails_the_attempt() {
    let q = queue(Duration::from_secs(30));
    let ids = enqueue_n(&q, 2, 1).await;
    let probe = Probe::new(|_: &Task, _| Box::pin(futures::future::pending()) as BoxFut);
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(2)
        .task_timeout(Duration::from_millis(50))
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.dead_lettered >= 2).await;
    assert_eq!(
        (report.timed_out, report.dead_lettered, report.completed),
        (2, 2, 0)
    );
    let dead = q.dead_letters(10).await.expect("dead letters");
    assert_eq!(dead.len(), ids.len());
    assert!(dead.iter().all(|d| d.reason.contains("task timeout")), "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_task_longer_than_its_lease() {
    // The lease lives 400 ms; the task runs 1.2 s. Without heartbeats it
    // would be redelivered (the worker keeps polling) and its ack refused.
    let lease_timeout = Duration::from_millis(400);
    let q = queue(lease_timeout);
    let ids = enqueue_n(&q, 1, 5).await;
    let probe = Probe::new(move |_: &Task, _| {
        Box::pin(async move {
            tokio::time::sleep(lease_timeout * 3).await;
            Ok(())
        }) as BoxFut
    });
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(2)
        .poll_wait(Duration::from_millis(20))
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.completed >= 1).await;
    assert_eq!((report.completed, report.lease_lost, report.leased), (1, 0, 1));
    assert_eq!(probe.attempts_of(&ids[0]), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_that_finds_the_lease_lost_abandons_the_attempt() {
    // Heartbeat slower than the lease: the first delivery's lease expires, the
    // task is delivered again (attempt 2 completes) and the first attempt's
    // heartbeat is refused, so its result is abandoned.
    let q = queue(Duration::from_millis(100));
    let ids = enqueue_n(&q, 1, 5).await;
    let probe = Probe::new(|_: &Task, attempt| {
        if attempt == 1 {
            Box::pin(futures::future::pending()) as BoxFut
        } else {
            ok()
        }
    });
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(2)
        .poll_wait(Duration::from_millis(20))
        .heartbeat_interval(Duration::from_millis(400))
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.completed >= 1 && r.lease_lost >= 1).await;
    assert_eq!(
        (
            report.completed,
            report.lease_lost,
            report.leased,
            report.in_flight
        ),
        (1, 1, 2, 0)
    );
    assert_eq!(probe.attempts_of(&ids[0]), vec![1, 2]);
    assert_eq!(q.depth().await.expect("depth").backlog(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_tasks_within_the_grace_period() {
    let q = queue(Duration::from_secs(30));
    enqueue_n(&q, 10, 5).await;
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let probe = Probe::new(move |_: &Task, _| {
        let g = g.clone();
        Box::pin(async move {
            g.acquire()
                .await
                .map_err(|_| Error::handler("gate closed"))?
                .forget();
            Ok(())
        }) as BoxFut
    });
    let metrics = Metrics::new();
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(4)
        .grace_period(Duration::from_secs(60))
        .metrics(metrics.clone())
        .build()
        .expect("build");
    let stop = Arc::new(Notify::new());
    let s = stop.clone();
    let run = tokio::spawn(worker.run_until(async move { s.notified().await }));
    probe.wait_started(4).await;
    stop.notify_one();
    // Let the in-flight tasks finish only once the worker is draining.
    while !metrics.is_draining() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gate.add_permits(100);
    let report = run.await.expect("join").expect("run");
    // The four in flight finished and were acked; nothing else was leased.
    assert_eq!((report.completed, report.released, report.leased), (4, 0, 4));
    let depth = q.depth().await.expect("depth");
    assert_eq!((depth.ready, depth.in_flight), (6, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_past_the_grace_period_releases_tasks_uncharged() {
    let q = queue(Duration::from_secs(30));
    let ids = enqueue_n(&q, 3, 5).await;
    let probe = Probe::new(|_: &Task, _| Box::pin(futures::future::pending()) as BoxFut);
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(3)
        .grace_period(Duration::from_millis(50))
        .build()
        .expect("build");
    let stop = Arc::new(Notify::new());
    let s = stop.clone();
    let run = tokio::spawn(worker.run_until(async move { s.notified().await }));
    probe.wait_started(3).await;
    stop.notify_one();
    let report = run.await.expect("join").expect("run");
    assert_eq!(
        (
            report.released,
            report.completed,
            report.retried,
            report.in_flight
        ),
        (3, 0, 0, 0)
    );
    let leases = q.lease(10, Duration::from_millis(10)).await.expect("lease");
    assert_eq!(leases.len(), 3);
    for l in &leases {
        assert!(ids.contains(&l.task().id));
        assert_eq!(l.attempt(), 1, "a released task must not be charged an attempt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadlines_and_exhausted_redeliveries_dead_letter_without_running() {
    let q = queue(Duration::from_millis(50));
    let late = Task::new("probe", "{}").with_deadline_in(Duration::ZERO);
    let late_id = late.id.clone();
    q.enqueue(late).await.expect("enqueue");
    // A task allowed one attempt whose first delivery was lost (the lease
    // expires unacked): its next delivery is attempt 2 > max_attempts 1.
    let crashed = Task::new("probe", "{}").with_max_attempts(1);
    let crashed_id = crashed.id.clone();
    q.enqueue(crashed).await.expect("enqueue");
    let first = q.lease(10, Duration::from_millis(10)).await.expect("lease");
    assert_eq!(first.len(), 2);
    let late_lease = first
        .iter()
        .find(|l| l.task().id == late_id)
        .expect("late leased");
    q.nack(late_lease, agentscale_core::Nack::Release)
        .await
        .expect("release");

    let probe = Probe::new(|_: &Task, _| ok());
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(2)
        .poll_wait(Duration::from_millis(20))
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.dead_lettered >= 2).await;
    assert_eq!((report.dead_lettered, report.completed), (2, 0));
    assert_eq!(probe.started.load(Ordering::SeqCst), 0, "neither task may run");
    let dead = q.dead_letters(10).await.expect("dead letters");
    let reason_of = |id: &TaskId| {
        dead.iter()
            .find(|d| d.task.as_ref().map(|t| &t.id) == Some(id))
            .map(|d| d.reason.clone())
    };
    assert!(reason_of(&late_id)
        .expect("late dead")
        .contains("deadline passed"));
    assert!(reason_of(&crashed_id)
        .expect("crashed dead")
        .contains("more than max_attempts 1"));
}

#[tokio::test]
async fn invalid_config_is_refused_at_build() {
    let q: Arc<dyn TaskQueue> = queue(Duration::from_secs(30));
    let probe = || Probe::new(|_: &Task, _| ok());
    let cases: Vec<(&str, Result<Worker<_>, Error>)> = vec![
        (
            "concurrency 0",
            Worker::builder(q.clone(), probe()).concurrency(0).build(),
        ),
        (
            "grace 0",
            Worker::builder(q.clone(), probe())
                .grace_period(Duration::ZERO)
                .build(),
        ),
        (
            "timeout 0",
            Worker::builder(q.clone(), probe())
                .task_timeout(Duration::ZERO)
                .build(),
        ),
        (
            "poll wait 0",
            Worker::builder(q.clone(), probe())
                .poll_wait(Duration::ZERO)
                .build(),
        ),
        (
            "ack batch 0",
            Worker::builder(q.clone(), probe()).ack_batch(0).build(),
        ),
        (
            "heartbeat 0",
            Worker::builder(q.clone(), probe())
                .heartbeat_interval(Duration::ZERO)
                .build(),
        ),
        (
            "backoff base > max",
            Worker::builder(q.clone(), probe())
                .backoff(Backoff::exponential(
                    Duration::from_secs(5),
                    Duration::from_secs(1),
                ))
                .build(),
        ),
    ];
    for (what, r) in cases {
        match r {
            Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{what}: {e}"),
            Ok(_) => panic!("{what} was accepted"),
        }
    }
    assert!(Worker::builder(q, probe()).build().is_ok());
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_serves_metrics_health_and_readiness() {
    let q = queue(Duration::from_secs(30));
    let name = q.name().to_owned();
    enqueue_n(&q, 25, 5).await;
    let metrics = Metrics::new();
    let exporter = Exporter::bind("127.0.0.1:0", metrics.clone())
        .await
        .expect("bind");
    let addr = exporter.local_addr();

    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    assert_eq!(
        http_get(addr, "/readyz").await.0,
        503,
        "not ready before a worker runs"
    );

    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let probe = Probe::new(move |_: &Task, _| {
        let g = g.clone();
        Box::pin(async move {
            g.acquire()
                .await
                .map_err(|_| Error::handler("gate closed"))?
                .forget();
            Ok(())
        }) as BoxFut
    });
    let worker = Worker::builder(q.clone(), probe.clone())
        .concurrency(5)
        .metrics(metrics.clone())
        .depth_poll_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    let stats = worker.stats();
    let stop = Arc::new(Notify::new());
    let s = stop.clone();
    let run = tokio::spawn(worker.run_until(async move { s.notified().await }));
    probe.wait_started(5).await;
    // Wait for a depth poll taken after the five leases (polled, not slept on).
    let polls = metrics.depth_polls();
    while metrics.depth_polls() < polls + 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        format!("agentscale_task_queue_depth{{queue=\"{name}\"}} 25"),
        format!("agentscale_task_queue_ready{{queue=\"{name}\"}} 20"),
        format!("agentscale_task_queue_in_flight{{queue=\"{name}\"}} 5"),
        "agentscale_worker_slots{state=\"busy\"} 5".to_owned(),
        "agentscale_worker_slots{state=\"total\"} 5".to_owned(),
    ] {
        assert!(body.contains(&line), "missing {line:?} in\n{body}");
    }

    gate.add_permits(25);
    stats.wait_until(|r| r.completed >= 25).await;
    stop.notify_one();
    let report = run.await.expect("join").expect("run");
    assert_eq!(report.completed, 25);
    let (_, body) = http_get(addr, "/metrics").await;
    for line in [
        "agentscale_tasks_total{outcome=\"completed\"} 25",
        "agentscale_task_duration_seconds_count 25",
        "agentscale_worker_slots{state=\"total\"} 0",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
    assert_eq!(http_get(addr, "/readyz").await.0, 503, "not ready after shutdown");
    exporter.shutdown().await;
}

/// Fault injection around the real local queue: the first `fail` calls of
/// `ack_batch` fail with `Unavailable` (a transient queue fault). With
/// `network`, it does not claim to be in-process, as a network queue would.
#[derive(Debug)]
struct FlakyAcks {
    inner: Arc<LocalQueue>,
    fail: AtomicU64,
    failed: AtomicU64,
    network: bool,
}

#[async_trait::async_trait]
impl TaskQueue for FlakyAcks {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn capabilities(&self) -> agentscale_core::Capabilities {
        let mut c = self.inner.capabilities();
        c.in_process &= !self.network;
        c
    }
    async fn enqueue(&self, task: Task) -> agentscale_core::Result<agentscale_core::Enqueued> {
        self.inner.enqueue(task).await
    }
    async fn lease(
        &self,
        max: usize,
        wait: Duration,
    ) -> agentscale_core::Result<Vec<agentscale_core::Lease>> {
        self.inner.lease(max, wait).await
    }
    async fn ack(&self, lease: &agentscale_core::Lease) -> agentscale_core::Result<()> {
        self.inner.ack(lease).await
    }
    async fn ack_batch(&self, leases: &[agentscale_core::Lease]) -> Vec<agentscale_core::Result<()>> {
        let left = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if left.is_ok() {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return leases
                .iter()
                .map(|_| {
                    Err(Error::Unavailable {
                        message: "injected: queue briefly unreachable".into(),
                        source: None,
                    })
                })
                .collect();
        }
        self.inner.ack_batch(leases).await
    }
    async fn nack(
        &self,
        lease: &agentscale_core::Lease,
        nack: agentscale_core::Nack,
    ) -> agentscale_core::Result<()> {
        self.inner.nack(lease, nack).await
    }
    async fn extend(&self, lease: &agentscale_core::Lease, by: Duration) -> agentscale_core::Result<()> {
        self.inner.extend(lease, by).await
    }
    async fn depth(&self) -> agentscale_core::Result<agentscale_core::Depth> {
        self.inner.depth().await
    }
}

/// Transient `ack_batch` failures are retried within the lease: every task
/// runs once and is acked, none comes back after its lease expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_ack_failures_are_retried() {
    let inner = queue(Duration::from_secs(2));
    let flaky = Arc::new(FlakyAcks {
        inner: inner.clone(),
        fail: AtomicU64::new(3),
        failed: AtomicU64::new(0),
        network: false,
    });
    let ids = enqueue_n(&inner, 50, 5).await;
    let probe = Probe::new(|_: &Task, _| ok());
    let worker = Worker::builder(flaky.clone(), probe.clone())
        .concurrency(8)
        .build()
        .expect("build");
    let report = run_until_counts(worker, |r| r.completed + r.queue_errors >= 50).await;
    assert_eq!(flaky.failed.load(Ordering::SeqCst), 3, "the faults were injected");
    assert_eq!((report.completed, report.queue_errors), (50, 0));
    assert!(report.ack_retries >= 1);
    // Past the lease timeout, nothing was redelivered: the acks went through.
    let depth = inner.depth().await.expect("depth");
    assert_eq!((depth.ready, depth.in_flight, depth.delayed), (0, 0, 0));
    for id in &ids {
        assert_eq!(probe.attempts_of(id), vec![1], "task {id} ran other than once");
    }
}

/// Over an in-process queue the first driver runs on the task that awaits
/// `run_until` (here the test's own thread, outside the runtime's worker
/// threads), so a producer task and the worker do not share a thread; over a
/// network queue every driver is spawned onto the runtime's threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_driver_runs_inline_only_over_an_in_process_queue() {
    let here = std::thread::current().id();
    for network in [false, true] {
        let inner = queue(Duration::from_secs(30));
        let q = Arc::new(FlakyAcks {
            inner: inner.clone(),
            fail: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            network,
        });
        enqueue_n(&inner, 20, 5).await;
        let threads = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let seen = threads.clone();
        let probe = Probe::new(move |_: &Task, _| {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(std::thread::current().id());
            ok()
        });
        let worker = Worker::builder(q, probe).concurrency(4).build().expect("build");
        let report = run_until_counts(worker, |r| r.completed >= 20).await;
        assert_eq!(report.completed, 20);
        let threads = threads.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if network {
            assert!(
                !threads.contains(&here),
                "network queue: handlers ran on {threads:?}"
            );
        } else {
            assert_eq!(
                threads,
                std::collections::HashSet::from([here]),
                "in-process queue"
            );
        }
    }
}
