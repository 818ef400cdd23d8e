//! Fault tests for the Redis Streams queue, against a `redis-server` each test
//! starts itself (AOF on, `appendfsync always`) on a free port and stops by
//! PID, with worker PROCESSES (`redis_fault_worker`) that the tests kill with
//! SIGKILL:
//!
//! 1. a worker killed mid-task → the task is delivered again and completed;
//! 2. Redis killed and restarted mid-run → workers and the producer recover by
//!    themselves and no acknowledged enqueue is lost;
//! 3. 10,000 tasks with random worker kills → 10,000 distinct completions,
//!    0 lost, duplicates counted and printed.
//!
//! Workers record completions in a Redis hash on the test's server (survives
//! their death), so counts are exact. Needs `redis-server` on PATH; skipped
//! like the other Redis tests when `AGENTSCALE_REDIS_URL` is unset.

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentscale_core::{ErrorKind, Task, TaskId, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_tests::redis_server::TestRedis;
use agentscale_tests::OwnedServer;
use rand::Rng;
use redis::AsyncCommands;

const WORKER_BIN: &str = env!("CARGO_BIN_EXE_redis_fault_worker");
const LEASE_MS: u64 = 1000;

/// A worker process; killed with SIGKILL on drop.
struct WorkerProc(Child);

impl WorkerProc {
    fn spawn(url: &str, queue: &str, concurrency: usize) -> WorkerProc {
        let child = Command::new(WORKER_BIN)
            .args([url, queue, &concurrency.to_string(), &LEASE_MS.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis_fault_worker");
        WorkerProc(child)
    }

    fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn enabled() -> bool {
    // The fault tests start their own Redis, but follow the Redis tests'
    // switch so a machine without Redis skips them (and CI fails loudly).
    agentscale_tests::service_env("AGENTSCALE_REDIS_URL").is_some()
}

async fn connect_queue(url: &str, name: &str) -> RedisQueue {
    let cfg = RedisQueueConfig::new(url, name)
        .with_lease_timeout(Duration::from_millis(LEASE_MS))
        .with_consumer_name(format!("test-producer-{}", std::process::id()));
    RedisQueue::connect(cfg).await.expect("connect")
}

fn work(sleep_ms: u64, first_attempt_sleep_ms: u64) -> Task {
    Task::json(
        "fault",
        &serde_json::json!({ "sleep_ms": sleep_ms, "first_attempt_sleep_ms": first_attempt_sleep_ms }),
    )
    .expect("json")
    .with_max_attempts(1000)
}

async fn done_counts(c: &mut redis::aio::MultiplexedConnection, queue: &str) -> HashMap<String, u64> {
    c.hgetall(format!("{queue}:done")).await.expect("hgetall")
}

/// Polls `cond` every 50 ms until it holds; panics after `limit` (a hang
/// guard, not a performance threshold).
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect")
}

/// 1. `kill -9` a worker process mid-task: another worker process reclaims
/// the lease after it expires, and completes the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_task_is_redelivered_and_completed() {
    if !enabled() {
        return;
    }
    let redis = TestRedis::start();
    let url = redis.url();
    let name = agentscale_tests::unique_name("kill");
    let q = connect_queue(&url, &name).await;
    // The first attempt runs "forever"; the redelivery finishes at once.
    let t = work(0, 3_600_000);
    q.enqueue(t.clone()).await.expect("enqueue");
    let first = WorkerProc::spawn(&url, &name, 4);
    let mut c = conn(&url).await;
    let started_key = format!("{name}:started");
    wait_for("the task to start", Duration::from_secs(60), || {
        let mut c = c.clone();
        let (k, id) = (started_key.clone(), t.id.to_string());
        async move { c.sismember::<_, _, bool>(k, id).await.expect("sismember") }
    })
    .await;
    assert_eq!(q.depth().await.expect("depth").in_flight, 1);
    first.kill9();
    let second = WorkerProc::spawn(&url, &name, 4);
    wait_for(
        "the task to complete on the second worker",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            let name = name.clone();
            async move { done_counts(&mut c, &name).await.len() == 1 }
        },
    )
    .await;
    wait_for("the queue to drain", Duration::from_secs(30), || {
        let q = q.clone();
        async move { q.depth().await.expect("depth").backlog() == 0 }
    })
    .await;
    let done = done_counts(&mut c, &name).await;
    assert_eq!(
        done.get(t.id.as_str()),
        Some(&1),
        "completed exactly once: {done:?}"
    );
    let d = q.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight, d.delayed, d.dead), (0, 0, 0, 0));
    drop(second);
}

/// 2. Redis is SIGKILLed and restarted (same AOF) while a producer enqueues
/// and worker processes consume: both recover by themselves, and every
/// enqueue that was acknowledged is completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_no_acknowledged_enqueue() {
    if !enabled() {
        return;
    }
    let mut redis = TestRedis::start();
    let url = redis.url();
    let name = agentscale_tests::unique_name("restart");
    let q = connect_queue(&url, &name).await;
    let workers: Vec<WorkerProc> = (0..2).map(|_| WorkerProc::spawn(&url, &name, 16)).collect();

    // The producer enqueues one task at a time; an error means "not
    // acknowledged": it retries the same task (same id and idempotency key),
    // so an enqueue whose reply was lost is not stored twice.
    const TOTAL: usize = 600;
    let producer = {
        let q = q.clone();
        tokio::spawn(async move {
            let mut acked: Vec<TaskId> = Vec::new();
            let mut errors = 0u64;
            for i in 0..TOTAL {
                let t = work(2, 0).with_idempotency_key(format!("task-{i}"));
                loop {
                    match q.enqueue(t.clone()).await {
                        Ok(e) => {
                            acked.push(e.id);
                            break;
                        }
                        Err(e) => {
                            assert!(
                                matches!(
                                    e.kind(),
                                    ErrorKind::Unavailable | ErrorKind::Backend | ErrorKind::Timeout
                                ),
                                "unexpected enqueue error {e}"
                            );
                            errors += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                if i % 4 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            (acked, errors)
        })
    };

    // Crash Redis once some tasks are done and the producer is mid-run.
    let c = conn(&url).await;
    wait_for(
        "some completions before the crash",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            let name = name.clone();
            async move { done_counts(&mut c, &name).await.len() >= 50 }
        },
    )
    .await;
    let restart = tokio::task::spawn_blocking(move || {
        redis.crash_and_restart(Duration::from_millis(1500));
        redis
    });
    let redis = restart.await.expect("restart");
    let (acked, producer_errors) = producer.await.expect("producer");
    assert_eq!(acked.len(), TOTAL);
    let acked: HashSet<String> = acked.into_iter().map(|id| id.to_string()).collect();
    assert_eq!(acked.len(), TOTAL, "idempotent retries kept one id per task");

    let mut c = conn(&url).await;
    wait_for(
        "every acknowledged task to complete",
        Duration::from_secs(120),
        || {
            let mut c = c.clone();
            let (name, acked) = (name.clone(), acked.clone());
            async move {
                let done = done_counts(&mut c, &name).await;
                acked.iter().all(|id| done.contains_key(id))
            }
        },
    )
    .await;
    let done = done_counts(&mut c, &name).await;
    let lost = acked.iter().filter(|id| !done.contains_key(*id)).count();
    let duplicates: u64 = done.values().map(|n| n.saturating_sub(1)).sum();
    eprintln!(
        "redis restart: acknowledged {} enqueues ({producer_errors} refused during the outage and retried), \
         completed {} distinct, lost {lost}, duplicate runs {duplicates}",
        acked.len(),
        done.len()
    );
    assert_eq!(lost, 0);
    wait_for("the queue to drain", Duration::from_secs(30), || {
        let q = q.clone();
        async move { q.depth().await.map(|d| d.backlog() == 0).unwrap_or(false) }
    })
    .await;
    assert_eq!(q.depth().await.expect("depth").dead, 0);
    drop(workers);
    drop(redis);
}

/// 3. 10,000 tasks, three worker processes, one of them SIGKILLed at random
/// every 50–200 ms and replaced: every task completes, none is lost;
/// duplicate runs (work done by a killed worker before its ack) are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_tasks_with_random_worker_kills() {
    if !enabled() {
        return;
    }
    let redis = TestRedis::start();
    let url = redis.url();
    let name = agentscale_tests::unique_name("chaos");
    let q = connect_queue(&url, &name).await;
    const N: usize = 10_000;
    let mut rng = rand::rng();
    let tasks: Vec<Task> = (0..N).map(|_| work(rng.random_range(0..4), 0)).collect();
    let ids: HashSet<String> = tasks.iter().map(|t| t.id.to_string()).collect();
    for chunk in tasks.chunks(1000) {
        for r in q.enqueue_batch(chunk.to_vec()).await {
            r.expect("enqueue");
        }
    }
    assert_eq!(q.depth().await.expect("depth").ready, N as u64);

    let mut workers: Vec<WorkerProc> = (0..3).map(|_| WorkerProc::spawn(&url, &name, 32)).collect();
    let mut c = conn(&url).await;
    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    loop {
        let done: u64 = c.hlen(format!("{name}:done")).await.expect("hlen");
        if done as usize >= N {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out with {done} of {N} done after {kills} kills"
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..200))).await;
        // Stop killing near the end so the last reclaims can finish.
        if (done as usize) < N * 9 / 10 {
            let victim = rng.random_range(0..workers.len());
            workers.swap_remove(victim).kill9();
            kills += 1;
            workers.push(WorkerProc::spawn(&url, &name, 32));
        }
    }
    wait_for("the queue to drain", Duration::from_secs(60), || {
        let q = q.clone();
        async move { q.depth().await.expect("depth").backlog() == 0 }
    })
    .await;
    drop(workers);
    let done = done_counts(&mut c, &name).await;
    let completed = done.keys().filter(|id| ids.contains(*id)).count();
    let extra = done.keys().filter(|id| !ids.contains(*id)).count();
    let lost = ids.iter().filter(|id| !done.contains_key(*id)).count();
    let duplicates: u64 = done.values().map(|n| n.saturating_sub(1)).sum();
    eprintln!(
        "random kills: {kills} worker processes killed; completed {completed} distinct of {N}, lost {lost}, \
         duplicate runs {duplicates}"
    );
    assert_eq!(extra, 0);
    assert_eq!(lost, 0);
    assert_eq!(completed, N);
    let d = q.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight, d.delayed, d.dead), (0, 0, 0, 0));
    drop(redis);
}

/// Waits until the test's own server has `n` clients blocked in a command.
async fn wait_blocked(url: &str, n: u64) {
    let mut c = conn(url).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info: String = redis::cmd("INFO")
            .arg("clients")
            .query_async(&mut c)
            .await
            .expect("info");
        let blocked = info
            .lines()
            .find_map(|l| l.strip_prefix("blocked_clients:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        if blocked == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} blocked clients never seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A proxy in front of the test's server at `url`, and the URL through it.
async fn proxied(url: &str) -> (agentscale_tests::net_cut::CutProxy, String) {
    let upstream: std::net::SocketAddr = url.trim_start_matches("redis://").parse().expect("server addr");
    let proxy = agentscale_tests::net_cut::CutProxy::start(upstream).await;
    let through = format!("redis://{}", proxy.addr());
    (proxy, through)
}

async fn plain_queue(url: &str, name: &str) -> RedisQueue {
    let cfg = RedisQueueConfig::new(url, name)
        .with_consumer_name("solo")
        .with_lease_timeout(Duration::from_secs(30));
    RedisQueue::connect(cfg).await.expect("connect")
}

/// A blocking read returns up to COUNT entries *per stream*, so a
/// `lease(1)` woken by two streams at once reads two. The extra one must
/// be handed out next, in its place, uncharged (it was once re-added at the
/// back of its stream, behind tasks enqueued after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_read_entries_keep_their_order_and_attempt() {
    if !enabled() {
        return;
    }
    let redis = TestRedis::start();
    let url = redis.url();
    let q = plain_queue(&url, &agentscale_tests::unique_name("overread")).await;
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.lease(1, Duration::from_secs(10)).await })
    };
    wait_blocked(&url, 1).await;
    // One transaction: the blocked read is served once, with both streams ready.
    let high = Task::new("k", "high").with_priority(agentscale_core::Priority::High);
    let (b1, b2) = (Task::new("k", "b1"), Task::new("k", "b2"));
    let mut c = conn(&url).await;
    let keys = q.keys().clone();
    let mut pipe = redis::pipe();
    pipe.atomic()
        .cmd("XADD")
        .arg(&keys.streams[0])
        .arg("*")
        .arg("task")
        .arg(high.encode().expect("encode"))
        .cmd("XADD")
        .arg(&keys.streams[1])
        .arg("*")
        .arg("task")
        .arg(b1.encode().expect("encode"))
        .cmd("XADD")
        .arg(&keys.streams[1])
        .arg("*")
        .arg("task")
        .arg(b2.encode().expect("encode"));
    let _: () = pipe.query_async(&mut c).await.expect("multi");
    let first = waiting.await.expect("join").expect("lease");
    assert_eq!(first.len(), 1, "lease(1) hands out one");
    assert_eq!(first[0].task().id, high.id);
    let mut order = Vec::new();
    for _ in 0..2 {
        let l = q.lease(1, Duration::from_secs(2)).await.expect("lease");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].attempt(), 1, "handing back charged an attempt");
        order.push(l[0].task().id.clone());
        q.ack(&l[0]).await.expect("ack");
    }
    assert_eq!(order, vec![b1.id, b2.id], "the over-read entry lost its place");
    q.ack(&first[0]).await.expect("ack");
    let d = q.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight), (0, 0));
}

/// The over-read made certain on any server version: the lease's blocking
/// read is held at a proxy until entries are already in all three streams,
/// so Redis answers it at once with up to COUNT entries from *each* stream
/// (a `lease(2)` reads 2 high, 2 normal and 1 low). The three it does not
/// hand out must stay pending to this consumer under their own entry ids
/// (not re-added at the back of their streams, behind later tasks) and be
/// handed out next, before the task that was behind them, uncharged. Under
/// the old re-`XADD` hand-back `n1` and `n2` would not be pending, would come
/// back under new entry ids and behind `n3` (reasoned from that code; the
/// test was not run against it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_read_by_a_read_that_finds_data_waiting_keeps_ids_order_and_attempts() {
    if !enabled() {
        return;
    }
    let redis = TestRedis::start();
    let url = redis.url();
    let (proxy, proxy_url) = proxied(&url).await;
    let q = plain_queue(&proxy_url, &agentscale_tests::unique_name("overheld")).await;
    proxy.hold_blocking_reads();
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.lease(2, Duration::from_secs(10)).await })
    };
    // The lease found nothing and sent its blocking read, which waits at the proxy.
    proxy.wait_held(1, Duration::from_secs(10)).await;
    let mut c = conn(&url).await;
    let keys = q.keys().clone();
    let mut ids: HashMap<TaskId, String> = HashMap::new();
    let add = |stream: usize, body: &str| {
        let task = Task::new("k", body.to_owned());
        let encoded = task.encode().expect("encode");
        let stream = keys.streams[stream].clone();
        (task, stream, encoded)
    };
    let planned = [
        add(0, "h1"),
        add(0, "h2"),
        add(1, "n1"),
        add(1, "n2"),
        add(1, "n3"),
        add(2, "l1"),
    ];
    let mut tasks = Vec::new();
    for (task, stream, encoded) in planned {
        let id: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("task")
            .arg(encoded)
            .query_async(&mut c)
            .await
            .expect("xadd");
        ids.insert(task.id.clone(), id);
        tasks.push(task);
    }
    let [h1, h2, n1, n2, n3, l1] = <[Task; 6]>::try_from(tasks).expect("six tasks");
    proxy.release_blocking_reads();
    let first = waiting.await.expect("join").expect("lease");
    let got: Vec<TaskId> = first.iter().map(|l| l.task().id.clone()).collect();
    assert_eq!(
        got,
        vec![h1.id.clone(), h2.id.clone()],
        "lease(2) hands out the high ones"
    );
    // The read took 2 + 2 + 1: five entries are pending to this consumer,
    // three of them not handed out yet (so the over-read did happen).
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&keys.streams[1])
        .arg(&q.config().consumer_group)
        .query_async(&mut c)
        .await
        .expect("xpending");
    let normal_pending = match pending {
        redis::Value::Array(ref v) => match v.first() {
            Some(redis::Value::Int(n)) => *n,
            _ => panic!("XPENDING summary: {pending:?}"),
        },
        _ => panic!("XPENDING summary: {pending:?}"),
    };
    assert_eq!(
        normal_pending, 2,
        "n1 and n2 were read and must stay pending (not re-added)"
    );
    let lens: Vec<u64> = {
        let mut lens = Vec::new();
        for s in &keys.streams {
            lens.push(c.xlen(s).await.expect("xlen"));
        }
        lens
    };
    assert_eq!(
        lens,
        vec![2, 3, 1],
        "an over-read entry was re-added to its stream"
    );

    let mut rest = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while rest.len() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 4 handed out",
            rest.len()
        );
        rest.extend(q.lease(10, Duration::from_millis(500)).await.expect("lease"));
    }
    let order: Vec<TaskId> = rest.iter().map(|l| l.task().id.clone()).collect();
    let pos = |id: &TaskId| order.iter().position(|o| o == id).expect("handed out");
    assert!(
        pos(&n1.id) < pos(&n2.id) && pos(&n2.id) < pos(&n3.id),
        "the over-read entries lost their place: {order:?} (n1 {}, n2 {}, n3 {})",
        n1.id,
        n2.id,
        n3.id
    );
    assert!(order.contains(&l1.id));
    for l in &rest {
        assert_eq!(l.attempt(), 1, "handing back charged an attempt");
        let entry = &ids[&l.task().id];
        assert!(
            l.receipt().ends_with(&format!(":{entry}")),
            "task {} came back under a new entry id: receipt {}, added as {entry}",
            l.task().id,
            l.receipt()
        );
    }
    for l in first.iter().chain(&rest) {
        q.ack(l).await.expect("ack");
    }
    let d = q.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight), (0, 0));
}

/// A `lease()` future dropped while its blocking read is in flight: the
/// entries that read takes are handed out by the next `lease()` at once,
/// not stranded in the pending list until the lease timeout (with an
/// attempt charged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lease_future_strands_nothing() {
    if !enabled() {
        return;
    }
    let redis = TestRedis::start();
    let url = redis.url();
    let q = plain_queue(&url, &agentscale_tests::unique_name("dropped")).await;
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.lease(1, Duration::from_secs(10)).await })
    };
    wait_blocked(&url, 1).await;
    waiting.abort();
    let _ = waiting.await;
    let task = Task::new("k", "after-drop");
    q.enqueue(task.clone()).await.expect("enqueue");
    // Well inside the 30 s lease timeout: only a hand-back delivers it now.
    let l = q.lease(1, Duration::from_secs(3)).await.expect("lease");
    assert_eq!(l.len(), 1, "the entry read for the dropped call was stranded");
    assert_eq!(l[0].task().id, task.id);
    assert_eq!(l[0].attempt(), 1);
    q.ack(&l[0]).await.expect("ack");
}

/// A worker cut off from Redis mid-run (a proxy that drops its traffic
/// without closing anything): its leases expire, another worker reclaims
/// and completes the tasks, the cut-off worker's acks after the network
/// heals are refused with `LeaseLost`, and nothing is lost or left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_from_redis_loses_its_leases_to_another() {
    if !enabled() {
        return;
    }
    let redis = TestRedis::start();
    let url = redis.url();
    let (proxy, proxy_url) = proxied(&url).await;
    let name = agentscale_tests::unique_name("netcut");
    let lease = Duration::from_millis(800);
    let member = |url: String, consumer: &'static str| {
        let name = name.clone();
        async move {
            let mut cfg = RedisQueueConfig::new(url, name)
                .with_consumer_name(consumer)
                .with_lease_timeout(lease)
                .with_reclaim_interval(Duration::from_millis(50));
            cfg.command_timeout = Duration::from_millis(500);
            cfg.connect_timeout = Duration::from_millis(500);
            RedisQueue::connect(cfg).await.expect("connect")
        }
    };
    let cut_off = member(proxy_url, "cut-off").await;
    let healthy = member(url.clone(), "healthy").await;

    const N: usize = 40;
    let ids: HashSet<TaskId> = {
        let tasks: Vec<Task> = (0..N).map(|i| Task::new("k", format!("t{i}"))).collect();
        for r in healthy.enqueue_batch(tasks.clone()).await {
            r.expect("enqueue");
        }
        tasks.into_iter().map(|t| t.id).collect()
    };
    let mut held = Vec::new();
    while held.len() < 15 {
        held.extend(
            cut_off
                .lease(15 - held.len(), Duration::from_secs(2))
                .await
                .expect("lease before the cut"),
        );
    }
    proxy.cut();
    // The cut-off worker "finishes" its tasks but cannot report it.
    let during = cut_off.ack(&held[0]).await.expect_err("no ack crosses a cut");
    assert!(
        matches!(during.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
        "{during}"
    );

    // The healthy worker completes everything, the cut-off worker's tasks
    // once their leases expired.
    let mut done: HashMap<TaskId, u32> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while done.len() < N {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} completed",
            done.len()
        );
        for l in healthy
            .lease(16, Duration::from_millis(500))
            .await
            .expect("lease")
        {
            healthy.ack(&l).await.expect("healthy ack");
            *done.entry(l.task().id.clone()).or_default() += 1;
        }
    }
    assert_eq!(
        done.keys().cloned().collect::<HashSet<_>>(),
        ids,
        "a task was lost"
    );
    assert!(
        done.values().all(|n| *n == 1),
        "a completed task ran again: {done:?}"
    );

    // The network heals; the late acks are fenced off.
    proxy.heal();
    for l in &held {
        let mut outcome = cut_off.ack(l).await;
        // The first call after the heal may still meet the dead connection.
        for _ in 0..20 {
            match &outcome {
                Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    outcome = cut_off.ack(l).await;
                }
                _ => break,
            }
        }
        let e = outcome.expect_err("a late ack after the lease was reclaimed");
        assert_eq!(e.kind(), ErrorKind::LeaseLost, "{e}");
    }
    let d = healthy.depth().await.expect("depth");
    assert_eq!((d.ready, d.in_flight, d.delayed, d.dead), (0, 0, 0, 0), "{d:?}");
}
