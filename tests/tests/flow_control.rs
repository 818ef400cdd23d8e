//! Flow control against real backends: ordered sessions across two Redis
//! workers, limiters in the worker (in-process and shared through Redis),
//! and run-time limit changes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentscale_core::flow::limit::{Admission, Exceeded, Limit, Limiter, LocalLimiter};
use agentscale_core::metrics::{LimitDecision, Metrics};
use agentscale_core::worker::{Handler, TaskContext, Worker, WorkerReport};
use agentscale_core::{Error, ErrorKind, Output, Task, TaskQueue};
use agentscale_queue::redis::{RedisLimiter, RedisQueue, RedisQueueConfig};
use agentscale_queue::LocalQueue;
use agentscale_redis::{Redis, RedisConfig};
use agentscale_testkit::{unique_name, Suites};

/// Records, per task, the attempt and the handler's start/end instants, and
/// the most handlers running at once.
#[derive(Default)]
struct Recorder {
    runs: Mutex<Vec<(Task, u32, Instant, Instant)>>,
    running: AtomicI64,
    peak: AtomicI64,
    work: Duration,
}

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, task: &Task, cx: &TaskContext) -> Result<Output, Error> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let start = Instant::now();
        tokio::time::sleep(self.work).await;
        let end = Instant::now();
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((task.clone(), cx.attempt(), start, end));
        Ok(Output::none())
    }
}

fn recorder(work: Duration) -> Arc<Recorder> {
    Arc::new(Recorder {
        work,
        ..Recorder::default()
    })
}

async fn run_until_completed<H: Handler>(worker: Worker<H>, n: u64) -> WorkerReport {
    let stats = worker.stats();
    let give_up = tokio::time::sleep(Duration::from_secs(60));
    let report = worker
        .run_until(async move {
            tokio::select! {
                _ = stats.wait_until(|r| r.completed >= n) => {}
                _ = give_up => {}
            }
        })
        .await
        .expect("run");
    assert_eq!(
        report.completed, n,
        "not every task completed within 60 s: {report:?}"
    );
    report
}

async fn redis(url: &str) -> Redis {
    Redis::connect(RedisConfig::builder().url(url).build().expect("config"))
        .await
        .expect("connect")
}

async fn ordered_queue(url: &str, name: &str, consumer: &str) -> RedisQueue {
    let cfg = RedisQueueConfig::new(url, name)
        .with_key_prefix("astest")
        .with_consumer_name(consumer)
        .with_lease_timeout(Duration::from_secs(2))
        .with_ordered_sessions(true);
    RedisQueue::connect(cfg).await.expect("connect")
}

/// Checks the runs of each session never overlap and follow enqueue order.
fn assert_sessions_ordered(runs: &[(Task, u32, Instant, Instant)]) {
    let mut by_session: HashMap<String, Vec<(usize, Instant, Instant)>> = HashMap::new();
    for (t, _, s, e) in runs {
        let seq: usize = std::str::from_utf8(&t.payload)
            .ok()
            .and_then(|p| p.parse().ok())
            .expect("payload is the sequence number");
        by_session
            .entry(t.session_id.clone().expect("session"))
            .or_default()
            .push((seq, *s, *e));
    }
    for (session, mut v) in by_session {
        v.sort_by_key(|(_, s, _)| *s);
        for w in v.windows(2) {
            assert!(
                w[0].0 < w[1].0,
                "session {session}: task {} ran after {}",
                w[1].0,
                w[0].0
            );
            assert!(
                w[0].2 <= w[1].1,
                "session {session}: tasks {} and {} overlapped",
                w[0].0,
                w[1].0
            );
        }
    }
}

/// Two workers (two consumers, as two replicas would be) on one ordered
/// Redis queue: every session runs one task at a time, in enqueue order,
/// while different sessions run in parallel.
async fn redis_ordered_sessions_across_two_workers(url: String) {
    let name = unique_name("ordered");
    let a = ordered_queue(&url, &name, "replica-a").await;
    let b = ordered_queue(&url, &name, "replica-b").await;
    let (sessions, per) = (12, 8);
    let mut tasks = Vec::new();
    for i in 0..per {
        for s in 0..sessions {
            tasks.push(Task::new("turn", i.to_string()).with_session(format!("conv-{s}")));
        }
    }
    assert!(a.enqueue_batch(tasks).await.iter().all(Result::is_ok));
    let rec = recorder(Duration::from_millis(5));
    let total = (sessions * per) as u64;
    let wa = Worker::builder(Arc::new(a.clone()), rec.clone())
        .concurrency(8)
        .build()
        .expect("worker");
    let wb = Worker::builder(Arc::new(b), rec.clone())
        .concurrency(8)
        .build()
        .expect("worker");
    let (sa, sb) = (wa.stats(), wb.stats());
    let done = {
        let (sa, sb) = (sa.clone(), sb.clone());
        move || sa.snapshot().completed + sb.snapshot().completed >= total
    };
    let (d1, d2) = (done.clone(), done);
    let stop = |d: Box<dyn Fn() -> bool + Send>| async move {
        let give_up = Instant::now() + Duration::from_secs(60);
        while !d() && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (ra, rb) = tokio::join!(wa.run_until(stop(Box::new(d1))), wb.run_until(stop(Box::new(d2))));
    let (ra, rb) = (ra.expect("run a"), rb.expect("run b"));
    assert_eq!(ra.completed + rb.completed, total, "{ra:?} {rb:?}");
    assert!(
        ra.completed > 0 && rb.completed > 0,
        "both replicas took work: {ra:?} {rb:?}"
    );
    let runs = rec.runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(runs.len() as u64, total);
    assert_sessions_ordered(&runs);
    assert!(rec.peak.load(Ordering::SeqCst) > 1, "sessions ran in parallel");
    let d = a.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight, d.delayed), (0, 0, 0));
    a.destroy().await.expect("destroy");
}

/// A worker with an in-process limiter: never more than the cap at once,
/// every task completes, and deferrals are not charged.
async fn local_worker_respects_in_flight_cap() {
    let q = LocalQueue::new(unique_name("capped"));
    let limiter = Arc::new(LocalLimiter::new());
    limiter
        .set_limit(
            "tenant:acme",
            Limit::builder().max_in_flight(2).build().expect("limit"),
        )
        .await
        .expect("set");
    for i in 0..20 {
        q.enqueue(Task::new("k", i.to_string()).with_tenant("acme"))
            .await
            .expect("enqueue");
    }
    for i in 0..5 {
        q.enqueue(Task::new("k", i.to_string()).with_tenant("other"))
            .await
            .expect("enqueue");
    }
    let rec = recorder(Duration::from_millis(20));
    let metrics = Metrics::new();
    let worker = Worker::builder(Arc::new(q.clone()), rec.clone())
        .concurrency(8)
        .metrics(metrics.clone())
        .limiter(limiter.clone(), |t: &Task| {
            t.tenant.iter().map(|t| format!("tenant:{t}")).collect()
        })
        .build()
        .expect("worker");
    let report = run_until_completed(worker, 25).await;
    assert!(report.deferred > 0, "the cap deferred tasks: {report:?}");
    assert_eq!(report.retried, 0);
    let runs = rec.runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        runs.iter().all(|(_, attempt, _, _)| *attempt == 1),
        "a deferral charged an attempt"
    );
    // Peak of acme tasks from the recorded intervals.
    let acme: Vec<(Instant, Instant)> = runs
        .iter()
        .filter(|(t, ..)| t.tenant.as_deref() == Some("acme"))
        .map(|(_, _, s, e)| (*s, *e))
        .collect();
    let peak = acme
        .iter()
        .map(|(s, _)| acme.iter().filter(|(s2, e2)| s2 <= s && s < e2).count())
        .max()
        .unwrap_or(0);
    assert!(peak <= 2, "{peak} acme tasks ran at once, over the cap of 2");
    let stats = limiter.stats();
    let acme_stats = stats.iter().find(|s| s.key == "tenant:acme").expect("stats");
    assert_eq!(acme_stats.granted, 20);
    assert!(acme_stats.deferred_in_flight > 0);
    // The same decisions, per key, in the worker's metrics.
    assert_eq!(metrics.limit_count("tenant:acme", LimitDecision::Granted), 20);
    assert_eq!(
        metrics.limit_count("tenant:acme", LimitDecision::DeferredInFlight),
        acme_stats.deferred_in_flight
    );
    assert_eq!(metrics.limit_count("tenant:other", LimitDecision::Granted), 5);
}

/// Two limiters on one Redis prefix share buckets and slots; limits change
/// at run time; bad definitions are typed errors.
async fn redis_limiter_is_shared(url: String) {
    let prefix = unique_name("lim");
    let l1 = RedisLimiter::new(redis(&url).await, prefix.clone()).expect("limiter");
    let l2 = RedisLimiter::new(redis(&url).await, prefix.clone()).expect("limiter");
    let hold = Duration::from_secs(30);
    assert!(matches!(
        l1.acquire("free", hold).await.expect("a"),
        Admission::Granted(_)
    ));
    l1.set_limit(
        "tool:search",
        Limit::builder().max_in_flight(3).build().expect("limit"),
    )
    .await
    .expect("set");
    let mut permits = Vec::new();
    for l in [&l1, &l2, &l1] {
        match l.acquire("tool:search", hold).await.expect("acquire") {
            Admission::Granted(p) => permits.push(p),
            other => panic!("expected a slot, got {other:?}"),
        }
    }
    for l in [&l1, &l2] {
        assert!(matches!(
            l.acquire("tool:search", hold).await.expect("acquire"),
            Admission::Deferred {
                exceeded: Exceeded::InFlight,
                ..
            }
        ));
    }
    l2.release(&permits[0]).await.expect("release");
    assert!(matches!(
        l1.acquire("tool:search", hold).await.expect("a"),
        Admission::Granted(_)
    ));
    // Raised at run time through the other limiter.
    l2.set_limit(
        "tool:search",
        Limit::builder().max_in_flight(4).build().expect("limit"),
    )
    .await
    .expect("set");
    assert!(matches!(
        l1.acquire("tool:search", hold).await.expect("a"),
        Admission::Granted(_)
    ));
    // A slot held by a dead worker frees when its hold ends.
    l1.set_limit(
        "tool:fetch",
        Limit::builder().max_in_flight(1).build().expect("limit"),
    )
    .await
    .expect("set");
    assert!(matches!(
        l1.acquire("tool:fetch", Duration::from_millis(200))
            .await
            .expect("a"),
        Admission::Granted(_)
    ));
    assert!(!matches!(
        l2.acquire("tool:fetch", hold).await.expect("a"),
        Admission::Granted(_)
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(
        l2.acquire("tool:fetch", hold).await.expect("a"),
        Admission::Granted(_)
    ));
    // Token bucket shared: burst 5, then deferred with a wait of about 1/rate.
    l1.set_limit(
        "model:gpt",
        Limit::builder()
            .rate_per_second(5.0)
            .burst(5)
            .build()
            .expect("limit"),
    )
    .await
    .expect("set");
    let mut granted = 0;
    for i in 0..10 {
        let l = if i % 2 == 0 { &l1 } else { &l2 };
        if let Admission::Granted(_) = l.acquire("model:gpt", hold).await.expect("a") {
            granted += 1;
        }
    }
    assert!(
        (5..=6).contains(&granted),
        "burst of 5 (plus at most one refill): {granted}"
    );
    match l2.acquire("model:gpt", hold).await.expect("a") {
        Admission::Deferred { retry_in, exceeded } => {
            assert_eq!(exceeded, Exceeded::Rate);
            assert!(retry_in <= Duration::from_millis(200), "{retry_in:?}");
        }
        other => panic!("expected a deferral, got {other:?}"),
    }
    let keys: Vec<String> = l2
        .limits()
        .await
        .expect("limits")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["model:gpt", "tool:fetch", "tool:search"]);
    for bad in [
        l1.set_limit(
            "has space",
            Limit::builder().max_in_flight(1).build().expect("limit"),
        )
        .await,
        l1.set_limit("k", Limit::default()).await,
    ] {
        assert_eq!(bad.map_err(|e| e.kind()), Err(ErrorKind::InvalidConfig));
    }
    l1.destroy().await.expect("destroy");
    assert!(l2.limits().await.expect("limits").is_empty());
}

/// Two workers on one Redis queue with one shared Redis limiter: the cap
/// holds across them.
async fn redis_workers_share_a_cap(url: String) {
    let name = unique_name("capq");
    let prefix = unique_name("lim");
    let limiter = Arc::new(RedisLimiter::new(redis(&url).await, prefix).expect("limiter"));
    limiter
        .set_limit(
            "tenant:acme",
            Limit::builder().max_in_flight(2).build().expect("limit"),
        )
        .await
        .expect("set");
    let qa = ordered_queue(&url, &name, "a").await;
    let qb = ordered_queue(&url, &name, "b").await;
    for i in 0..16 {
        qa.enqueue(Task::new("k", i.to_string()).with_tenant("acme"))
            .await
            .expect("enqueue");
    }
    let rec = recorder(Duration::from_millis(30));
    let keys = |t: &Task| t.tenant.iter().map(|t| format!("tenant:{t}")).collect::<Vec<_>>();
    let wa = Worker::builder(Arc::new(qa.clone()), rec.clone())
        .concurrency(4)
        .limiter(limiter.clone(), keys)
        .build()
        .expect("worker");
    let wb = Worker::builder(Arc::new(qb), rec.clone())
        .concurrency(4)
        .limiter(limiter.clone(), keys)
        .build()
        .expect("worker");
    let (sa, sb) = (wa.stats(), wb.stats());
    let until_done = |sa: Arc<agentscale_core::WorkerStats>, sb: Arc<agentscale_core::WorkerStats>| async move {
        let give_up = Instant::now() + Duration::from_secs(60);
        while sa.snapshot().completed + sb.snapshot().completed < 16 && Instant::now() < give_up {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (ra, rb) = tokio::join!(
        wa.run_until(until_done(sa.clone(), sb.clone())),
        wb.run_until(until_done(sa, sb))
    );
    let (ra, rb) = (ra.expect("a"), rb.expect("b"));
    assert_eq!(ra.completed + rb.completed, 16, "{ra:?} {rb:?}");
    assert_eq!(ra.retried + rb.retried, 0);
    assert!(
        rec.peak.load(Ordering::SeqCst) <= 2,
        "more than 2 ran at once across the fleet"
    );
    qa.destroy().await.expect("destroy");
    limiter.destroy().await.expect("destroy");
}

/// Two schedulers on one Redis store, one killed mid-run: every tick of the
/// run is enqueued exactly once, none twice, none missed.
async fn redis_two_schedulers_one_killed(url: String) {
    use agentscale_core::flow::schedule::{tick_of, Schedule, ScheduleStore, Scheduler};
    use agentscale_queue::redis::RedisScheduleStore;
    let name = unique_name("sched");
    let prefix = unique_name("sch");
    let queue = Arc::new(ordered_queue(&url, &name, "consumer").await);
    let store: Arc<dyn ScheduleStore> =
        Arc::new(RedisScheduleStore::new(redis(&url).await, &prefix).expect("store"));
    let start = agentscale_core::task::now_ms();
    let s = Schedule::every("heartbeat", Duration::from_secs(1), Task::new("beat", "{}"))
        .expect("schedule")
        .with_created_ms(start);
    store.put(&s).await.expect("put");
    let build = |owner: &str| {
        Scheduler::builder(store.clone(), queue.clone())
            .owner(owner)
            .poll_interval(Duration::from_millis(100))
            .claim_ttl(Duration::from_millis(800))
            .catch_up_window(Duration::from_secs(5))
            .build()
            .expect("scheduler")
    };
    let a = tokio::spawn(build("a").run_until(futures::future::pending()));
    let b = build("b");
    let (stop_b, stopped) = tokio::sync::oneshot::channel::<()>();
    let b_run = tokio::spawn(b.run_until(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(3_300)).await;
    a.abort(); // killed, possibly between a claim and its enqueue
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let _ = stop_b.send(());
    let rb = b_run.await.expect("b");
    assert!(rb.fired > 0, "the survivor fired ticks: {rb:?}");
    // A last, deterministic poll at a fixed instant closes the run.
    let end = agentscale_core::task::now_ms();
    let last = build("closer");
    let mut report = agentscale_core::flow::schedule::SchedulerReport::default();
    last.poll_at(end, &mut report).await.expect("poll");
    let mut per_tick: HashMap<u64, usize> = HashMap::new();
    loop {
        let leases = queue
            .lease(1000, Duration::from_millis(200))
            .await
            .expect("lease");
        if leases.is_empty() {
            break;
        }
        for l in &leases {
            *per_tick
                .entry(tick_of(l.task()).expect("tick header"))
                .or_default() += 1;
        }
        assert!(queue.ack_batch(&leases).await.iter().all(Result::is_ok));
    }
    let expected = s.ticks_between(0, end, 1000).expect("ticks");
    let duplicates: Vec<_> = per_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicates.is_empty(), "ticks enqueued twice: {duplicates:?}");
    let missed: Vec<_> = expected.iter().filter(|t| !per_tick.contains_key(t)).collect();
    assert!(missed.is_empty(), "ticks never enqueued: {missed:?}");
    assert_eq!(per_tick.len(), expected.len(), "no tick outside the schedule");
    let listed = store.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_fired_ms, expected.last().copied());
    store.set_paused("heartbeat", true).await.expect("pause");
    assert!(last
        .poll_at(end + 5_000, &mut report)
        .await
        .expect("poll")
        .is_empty());
    assert!(store.remove("heartbeat").await.expect("remove"));
    assert_eq!(
        store.set_paused("heartbeat", false).await.map_err(|e| e.kind()),
        Err(ErrorKind::NotFound)
    );
    queue.destroy().await.expect("destroy");
}

fn main() {
    agentscale_testkit::run(|| {
        Suites::new()
            .test(
                "local_worker_respects_in_flight_cap",
                local_worker_respects_in_flight_cap,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "redis_ordered_sessions_across_two_workers",
                redis_ordered_sessions_across_two_workers,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "redis_limiter_is_shared",
                redis_limiter_is_shared,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "redis_workers_share_a_cap",
                redis_workers_share_a_cap,
            )
            .service_test(
                "AGENTSCALE_REDIS_URL",
                "redis_two_schedulers_one_killed",
                redis_two_schedulers_one_killed,
            )
    })
}
