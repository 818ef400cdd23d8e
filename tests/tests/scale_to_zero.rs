//! Scale to zero never strands a retry (real Redis from
//! `AGENTSCALE_REDIS_URL`): a worker fails a task once, the retry waits in
//! the delayed set, the fleet scales to zero; the queue's due depth counts
//! the retry once its backoff ended although nobody leases, the always-on
//! queue keeper promotes it and exports the due depth on `/metrics` (what
//! the autoscaler reads), and a new worker, started because that number is
//! above zero, completes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentscale_core::keeper::{QueueKeeper, QueueKeeperConfig};
use agentscale_core::metrics::{Exporter, Metrics};
use agentscale_core::worker::{Backoff, Handler, TaskContext, Worker};
use agentscale_core::{Error, Output, Task, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_tests::{service_env, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fails the first attempt of every task (a transient error), completes the rest.
#[derive(Default)]
struct FailOnce {
    attempts: Mutex<Vec<u32>>,
    completed: AtomicU64,
}

#[async_trait::async_trait]
impl Handler for FailOnce {
    async fn handle(&self, _task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cx.attempt());
        if cx.attempt() == 1 {
            return Err(Error::handler("the refund service is briefly down"));
        }
        self.completed.fetch_add(1, Ordering::SeqCst);
        Ok(Output::none())
    }
}

/// `agentscale_task_queue_due{queue}` as scraped from the exporter over HTTP.
async fn scrape_due(addr: std::net::SocketAddr, queue: &str) -> Option<u64> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let series = format!("agentscale_task_queue_due{{queue=\"{queue}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(series.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Polls `check` until it returns `Some`, failing after a generous deadline
/// (a hang guard, not a timing assertion).
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "gave up waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(url: &str, name: &str, consumer: &str) -> Arc<RedisQueue> {
    let cfg = RedisQueueConfig::new(url, name)
        .with_key_prefix("astest")
        .with_consumer_name(consumer)
        .with_lease_timeout(Duration::from_secs(10));
    Arc::new(RedisQueue::connect(cfg).await.expect("connect"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_zero_delayed_retry_is_picked_up_by_a_new_worker() {
    let Some(url) = service_env("AGENTSCALE_REDIS_URL") else {
        return;
    };
    let name = unique_name("scale-to-zero");
    let handler = Arc::new(FailOnce::default());

    // The last worker of the fleet fails the task once: the retry is delayed.
    let queue = connect(&url, &name, "pod-1").await;
    let task = Task::new("refund", "{}").with_max_attempts(3);
    queue.enqueue(task.clone()).await.expect("enqueue");
    let worker = Worker::builder(queue.clone(), handler.clone())
        .backoff(Backoff::fixed(Duration::from_secs(2)))
        .poll_wait(Duration::from_millis(100))
        .build()
        .expect("worker");
    let stats = worker.stats();
    let report = worker
        .run_until(async move {
            stats.wait_until(|r| r.retried == 1).await;
        })
        .await
        .expect("run");
    assert_eq!((report.retried, report.completed), (1, 0), "{report:?}");

    // Scaled to zero: no worker leases. The retry sits in the delayed set;
    // once its backoff ended the due depth counts it although nothing moved
    // it to the ready stream (ready + in flight alone would say 0).
    let d = queue.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight, d.delayed), (0, 0, 1), "{d:?}");
    let d = eventually("the retry falls due", || {
        let q = queue.clone();
        async move { q.depth().await.ok().filter(|d| d.due_delayed == 1) }
    })
    .await;
    assert_eq!((d.backlog(), d.due()), (0, 1), "{d:?}");

    // The always-on keeper (its own connection, as in its own pod) promotes
    // the due retry and exports the due depth over HTTP.
    let keeper_queue = connect(&url, &name, "keeper").await;
    let metrics = Metrics::new();
    let exporter = Exporter::bind("127.0.0.1:0", metrics.clone())
        .await
        .expect("exporter");
    let config = QueueKeeperConfig::builder()
        .interval(Duration::from_millis(100))
        .build()
        .expect("config");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(
        QueueKeeper::new(keeper_queue.clone(), metrics.clone(), config).run_until(async move {
            let _ = stopped.await;
        }),
    );
    let addr = exporter.local_addr();
    let due = eventually("the keeper exports a due depth above zero", || {
        let name = name.clone();
        async move { scrape_due(addr, &name).await.filter(|n| *n > 0) }
    })
    .await;
    assert_eq!(due, 1);
    // Promoted: now ready on the stream, where KEDA's redis-streams lag sees it too.
    eventually("the keeper promotes the retry", || {
        let q = queue.clone();
        async move { q.depth().await.ok().filter(|d| d.ready == 1 && d.delayed == 0) }
    })
    .await;
    assert_eq!(metrics.promoted_count(), 1);
    assert_eq!(handler.completed.load(Ordering::SeqCst), 0, "nobody ran it yet");

    // The autoscaler saw due > 0 and starts a worker (a new pod): it
    // completes the task on its second attempt.
    let pod2 = connect(&url, &name, "pod-2").await;
    let worker = Worker::builder(pod2.clone(), handler.clone())
        .poll_wait(Duration::from_millis(100))
        .build()
        .expect("worker");
    let stats = worker.stats();
    let report = worker
        .run_until(async move {
            stats.wait_until(|r| r.completed == 1).await;
        })
        .await
        .expect("run");
    assert_eq!(
        (report.completed, report.retried, report.dead_lettered),
        (1, 0, 0)
    );
    assert_eq!(*handler.attempts.lock().expect("lock"), vec![1, 2]);

    // Drained: the exported due depth falls back to zero, so the fleet may
    // scale to zero again.
    eventually("the due depth returns to zero", || {
        let name = name.clone();
        async move { scrape_due(addr, &name).await.filter(|n| *n == 0) }
    })
    .await;
    let d = queue.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight, d.delayed, d.dead), (0, 0, 0, 0), "{d:?}");

    let _ = stop.send(());
    let keeper_report = keeper.await.expect("join").expect("keeper");
    assert_eq!(keeper_report.promoted, 1);
    assert!(keeper_report.rounds > 0);
    exporter.shutdown().await;
    queue.destroy().await.expect("destroy");
}

/// The keeper over the in-process queue and over a backend that cannot
/// promote: it exports either way and reports what it did.
#[tokio::test]
async fn keeper_exports_when_the_backend_cannot_promote() {
    #[derive(Debug)]
    struct NoPromote(agentscale_queue::LocalQueue);
    #[async_trait::async_trait]
    impl TaskQueue for NoPromote {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn capabilities(&self) -> agentscale_core::Capabilities {
            self.0.capabilities()
        }
        async fn enqueue(&self, t: Task) -> agentscale_core::Result<agentscale_core::Enqueued> {
            self.0.enqueue(t).await
        }
        async fn lease(
            &self,
            max: usize,
            wait: Duration,
        ) -> agentscale_core::Result<Vec<agentscale_core::Lease>> {
            self.0.lease(max, wait).await
        }
        async fn ack(&self, l: &agentscale_core::Lease) -> agentscale_core::Result<()> {
            self.0.ack(l).await
        }
        async fn nack(
            &self,
            l: &agentscale_core::Lease,
            n: agentscale_core::Nack,
        ) -> agentscale_core::Result<()> {
            self.0.nack(l, n).await
        }
        async fn extend(&self, l: &agentscale_core::Lease, by: Duration) -> agentscale_core::Result<()> {
            self.0.extend(l, by).await
        }
        async fn depth(&self) -> agentscale_core::Result<agentscale_core::Depth> {
            self.0.depth().await
        }
    }
    let q = NoPromote(agentscale_queue::LocalQueue::new(unique_name("keeper-local")));
    q.enqueue(Task::new("k", "1")).await.expect("enqueue");
    let metrics = Metrics::new();
    let keeper = QueueKeeper::new(Arc::new(q), metrics.clone(), QueueKeeperConfig::default());
    for _ in 0..2 {
        let round = keeper.round().await.expect("round");
        assert_eq!((round.promoted, round.depth.due()), (0, 1));
    }
    assert_eq!(metrics.depth_polls(), 2);
    assert_eq!(metrics.promoted_count(), 0);
}
