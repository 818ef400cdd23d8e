//! Flow control on Redis: ordered sessions, a fleet-wide rate limit, and two
//! schedulers of which one is killed.
//!
//! ```text
//! cargo run --release --example bench_flow -- --redis-url redis://127.0.0.1:6379
//! cargo run --release --example bench_flow -- --rate-window-s 30   # the issue's 30 s window
//! ```
//!
//! 1. **Ordered sessions.** `--tasks` tasks over `--sessions` sessions of
//!    random lengths, run by two workers (two consumers) on an ordered Redis
//!    queue; the baseline runs the same tasks on an unordered queue. The
//!    handlers record start and end; a violation is two tasks of one session
//!    overlapping in time or running out of enqueue order. Median of `--runs`.
//! 2. **Rate limit.** `--rate` per second shared by `--workers` worker
//!    *processes* (this program re-executed) through one `RedisLimiter`;
//!    handler starts are counted in a `--rate-window-s` window;
//!    overshoot = starts / (rate x window) - 1.
//! 3. **Schedules.** A 1 s interval schedule, two schedulers: one in a child
//!    process killed (SIGKILL) half-way, one here; every tick of the run must
//!    be enqueued exactly once.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentscale_core::flow::limit::{Limit, Limiter};
use agentscale_core::flow::schedule::{tick_of, Schedule, ScheduleStore, Scheduler, SchedulerReport};
use agentscale_core::task::now_ms;
use agentscale_core::worker::{Handler, TaskContext, Worker};
use agentscale_core::{Error, Output, Task, TaskQueue};
use agentscale_queue::redis::{RedisLimiter, RedisQueue, RedisQueueConfig, RedisScheduleStore};
use agentscale_redis::{Redis, RedisConfig};
use clap::Parser;
use rand::Rng;

#[derive(Parser, Debug)]
#[command(about = "Ordered sessions, fleet-wide rate limits and schedules on Redis")]
struct Args {
    /// Redis URL (default: $AGENTSCALE_REDIS_URL, else redis://127.0.0.1:6379).
    #[arg(long)]
    redis_url: Option<String>,
    /// Tasks of the ordered-session part.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Sessions they are spread over (random lengths).
    #[arg(long, default_value_t = 500)]
    sessions: usize,
    /// Handler slots per worker (two workers).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Runs of the ordered/unordered comparison (median reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Shared rate limit, tasks per second.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Worker processes sharing the rate limit.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Measurement window of the rate limit, seconds.
    #[arg(long, default_value_t = 10)]
    rate_window_s: u64,
    /// Length of the schedule run, seconds.
    #[arg(long, default_value_t = 8)]
    schedule_s: u64,
    /// Internal: run as a child process (`rate-worker` or `scheduler`).
    #[arg(long, hide = true)]
    child: Option<String>,
    /// Internal: queue name for a child.
    #[arg(long, hide = true)]
    queue: Option<String>,
    /// Internal: key prefix for a child.
    #[arg(long, hide = true)]
    prefix: Option<String>,
    /// Internal: window start (ms since the epoch) for a rate child.
    #[arg(long, hide = true)]
    t0_ms: Option<u64>,
}

type Runs = Arc<Mutex<Vec<(String, usize, Instant, Instant)>>>;

struct Recorder {
    runs: Runs,
}

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        let start = Instant::now();
        // A little I/O-like work per turn.
        tokio::time::sleep(Duration::from_millis(1)).await;
        let end = Instant::now();
        let seq = std::str::from_utf8(&task.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        let session = task.session_id.clone().unwrap_or_default();
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((session, seq, start, end));
        Ok(Output::none())
    }
}

fn url(args: &Args) -> String {
    args.redis_url
        .clone()
        .or_else(|| {
            std::env::var("AGENTSCALE_REDIS_URL")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "redis://127.0.0.1:6379".to_string())
}

async fn queue(url: &str, name: &str, consumer: &str, ordered: bool) -> Result<RedisQueue, Error> {
    RedisQueue::connect(
        RedisQueueConfig::new(url, name)
            .with_key_prefix("asbench")
            .with_consumer_name(consumer)
            .with_lease_timeout(Duration::from_secs(10))
            .with_ordered_sessions(ordered),
    )
    .await
}

async fn redis(url: &str) -> Result<Redis, Error> {
    Redis::connect(RedisConfig::builder().url(url).build()?).await
}

/// Tasks over sessions of random lengths: each task picks a session
/// uniformly at random (lengths are then binomial: 40 on average for the
/// defaults, from about 20 to 65).
fn session_tasks(tasks: usize, sessions: usize) -> Vec<Task> {
    let mut rng = rand::rng();
    let mut next_seq = vec![0usize; sessions];
    (0..tasks)
        .map(|_| {
            let s = rng.random_range(0..sessions);
            let seq = next_seq[s];
            next_seq[s] += 1;
            Task::new("turn", seq.to_string()).with_session(format!("conv-{s}"))
        })
        .collect()
}

/// Overlaps and out-of-order runs within sessions, from handler timestamps.
fn violations(runs: &[(String, usize, Instant, Instant)]) -> usize {
    let mut by: HashMap<&str, Vec<(usize, Instant, Instant)>> = HashMap::new();
    for (s, seq, a, b) in runs {
        by.entry(s).or_default().push((*seq, *a, *b));
    }
    let mut bad = 0;
    for v in by.values_mut() {
        v.sort_by_key(|(_, a, _)| *a);
        bad += v
            .windows(2)
            .filter(|w| w[0].0 > w[1].0 || w[0].2 > w[1].1)
            .count();
    }
    bad
}

/// Runs the tasks with two workers; returns (tasks/s, violations).
async fn run_sessions(
    url: &str,
    tasks: &[Task],
    ordered: bool,
    concurrency: usize,
) -> Result<(f64, usize), Error> {
    let name = format!(
        "flow-{}-{}",
        if ordered { "ord" } else { "unord" },
        rand::random::<u32>()
    );
    let qa = queue(url, &name, "a", ordered).await?;
    let qb = queue(url, &name, "b", ordered).await?;
    for chunk in tasks.chunks(1000) {
        for r in qa.enqueue_batch(chunk.to_vec()).await {
            r?;
        }
    }
    let runs: Runs = Arc::default();
    let total = tasks.len() as u64;
    let started = Instant::now();
    let mut stats = Vec::new();
    let mut workers = Vec::new();
    for q in [qa.clone(), qb] {
        let w = Worker::builder(Arc::new(q), Recorder { runs: runs.clone() })
            .concurrency(concurrency)
            .build()?;
        stats.push(w.stats());
        workers.push(w);
    }
    let done = Arc::new(tokio::sync::Notify::new());
    let mut handles = Vec::new();
    for w in workers {
        let (stats, done) = (stats.clone(), done.clone());
        handles.push(tokio::spawn(w.run_until(async move {
            let give_up = Instant::now() + Duration::from_secs(300);
            while stats.iter().map(|s| s.snapshot().completed).sum::<u64>() < total
                && Instant::now() < give_up
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            done.notify_waiters();
        })));
    }
    for h in handles {
        h.await.map_err(|e| Error::backend("worker task", e))??;
    }
    let secs = started.elapsed().as_secs_f64();
    let completed: u64 = stats.iter().map(|s| s.snapshot().completed).sum();
    qa.destroy().await?;
    if completed < total {
        return Err(Error::Timeout(format!("{completed} of {total} tasks completed")));
    }
    let runs = runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok((total as f64 / secs, violations(&runs)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Counter {
    t0: u64,
    t1: u64,
    in_window: AtomicU64,
}

#[async_trait::async_trait]
impl Handler for Counter {
    async fn handle(&self, _task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        let now = now_ms();
        if now >= self.t0 && now < self.t1 {
            self.in_window.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Output::none())
    }
}

/// Child: a worker under the shared limit; prints the starts in the window.
async fn rate_child(args: &Args) -> Result<(), Error> {
    let url = url(args);
    let (Some(name), Some(prefix), Some(t0)) = (&args.queue, &args.prefix, args.t0_ms) else {
        return Err(Error::InvalidInput("child needs --queue --prefix --t0-ms".into()));
    };
    let q = queue(&url, name, &format!("rate-{}", std::process::id()), false).await?;
    let limiter = Arc::new(RedisLimiter::new(redis(&url).await?, prefix.clone())?);
    let t1 = t0 + args.rate_window_s * 1000;
    let counter = Arc::new(Counter {
        t0,
        t1,
        in_window: AtomicU64::new(0),
    });
    let w = Worker::builder(Arc::new(q), counter.clone())
        .concurrency(16)
        .limiter(limiter, |_t: &Task| vec!["model:bench".to_string()])
        .build()?;
    let stop = tokio::time::sleep(Duration::from_millis((t1 + 300).saturating_sub(now_ms())));
    w.run_until(stop).await?;
    println!("STARTS {}", counter.in_window.load(Ordering::Relaxed));
    Ok(())
}

async fn rate_part(args: &Args, url: &str) -> Result<f64, Box<dyn std::error::Error>> {
    let name = format!("flow-rate-{}", rand::random::<u32>());
    let prefix = format!("flowlim{}", rand::random::<u32>());
    let q = queue(url, &name, "producer", false).await?;
    let limiter = RedisLimiter::new(redis(url).await?, prefix.clone())?;
    limiter
        .set_limit(
            "model:bench",
            Limit::builder().rate_per_second(args.rate).burst(1).build()?,
        )
        .await?;
    let n = (args.rate * args.rate_window_s as f64 * 1.5) as usize + 200;
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        for r in q
            .enqueue_batch(chunk.iter().map(|i| Task::new("call", i.to_string())).collect())
            .await
        {
            r?;
        }
    }
    let t0 = now_ms() + 2_000;
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for _ in 0..args.workers {
        children.push(
            tokio::process::Command::new(&exe)
                .args(["--child", "rate-worker", "--queue", &name, "--prefix", &prefix])
                .args(["--t0-ms", &t0.to_string(), "--redis-url", url])
                .args(["--rate-window-s", &args.rate_window_s.to_string()])
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    let mut starts = 0u64;
    for c in children {
        let out = c.wait_with_output().await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let n: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("STARTS ").and_then(|n| n.trim().parse().ok()))
            .ok_or_else(|| format!("a rate worker printed no count: {text:?} ({})", out.status))?;
        starts += n;
    }
    q.destroy().await?;
    limiter.destroy().await?;
    let allowed = args.rate * args.rate_window_s as f64;
    println!(
        "rate limit: {starts} handler starts in {} s across {} processes (limit {} / s = {allowed})",
        args.rate_window_s, args.workers, args.rate
    );
    Ok((starts as f64 / allowed - 1.0) * 100.0)
}

fn scheduler(store: Arc<dyn ScheduleStore>, q: Arc<dyn TaskQueue>, owner: &str) -> Result<Scheduler, Error> {
    Scheduler::builder(store, q)
        .owner(owner)
        .poll_interval(Duration::from_millis(100))
        .claim_ttl(Duration::from_millis(800))
        .catch_up_window(Duration::from_secs(5))
        .build()
}

/// Child: a scheduler that runs until it is killed.
async fn scheduler_child(args: &Args) -> Result<(), Error> {
    let url = url(args);
    let (Some(name), Some(prefix)) = (&args.queue, &args.prefix) else {
        return Err(Error::InvalidInput("child needs --queue --prefix".into()));
    };
    let q = Arc::new(queue(&url, name, "sched-child", false).await?);
    let store = Arc::new(RedisScheduleStore::new(redis(&url).await?, prefix)?);
    scheduler(store, q, "child")?
        .run_until(futures::future::pending())
        .await;
    Ok(())
}

async fn schedule_part(args: &Args, url: &str) -> Result<(usize, usize), Box<dyn std::error::Error>> {
    let name = format!("flow-sched-{}", rand::random::<u32>());
    let prefix = format!("flowsch{}", rand::random::<u32>());
    let q = Arc::new(queue(url, &name, "sched-parent", false).await?);
    let store: Arc<dyn ScheduleStore> = Arc::new(RedisScheduleStore::new(redis(url).await?, &prefix)?);
    let s =
        Schedule::every("beat", Duration::from_secs(1), Task::new("beat", "{}"))?.with_created_ms(now_ms());
    store.put(&s).await?;
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(&exe)
        .args([
            "--child",
            "scheduler",
            "--queue",
            &name,
            "--prefix",
            &prefix,
            "--redis-url",
            url,
        ])
        .kill_on_drop(true)
        .spawn()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let here = scheduler(store.clone(), q.clone(), "parent")?;
    let run = tokio::spawn(here.run_until(async move {
        let _ = stopped.await;
    }));
    tokio::time::sleep(Duration::from_millis(args.schedule_s * 500)).await;
    child.kill().await?; // SIGKILL, possibly between a claim and its enqueue
    tokio::time::sleep(Duration::from_millis(args.schedule_s * 500)).await;
    let _ = stop.send(());
    let report = run.await?;
    let end = now_ms();
    // Close the run at a fixed instant (as the surviving scheduler's next poll would).
    scheduler(store.clone(), q.clone(), "closer")?
        .poll_at(end, &mut SchedulerReport::default())
        .await?;
    let mut per_tick: HashMap<u64, usize> = HashMap::new();
    loop {
        let leases = q.lease(1000, Duration::from_millis(200)).await?;
        if leases.is_empty() {
            break;
        }
        for l in &leases {
            if let Some(t) = tick_of(l.task()) {
                *per_tick.entry(t).or_default() += 1;
            }
        }
        q.ack_batch(&leases).await;
    }
    let expected = s.ticks_between(0, end, 10_000)?;
    let duplicates = per_tick.values().filter(|n| **n > 1).count();
    let missed = expected.iter().filter(|t| !per_tick.contains_key(t)).count();
    println!(
        "schedules: {} ticks expected, {} enqueued; the surviving scheduler fired {} (the killed one the rest)",
        expected.len(),
        per_tick.len(),
        report.fired
    );
    q.destroy().await?;
    if let Some(rs) = store.list().await?.first() {
        store.remove(&rs.schedule.name).await?;
    }
    Ok((duplicates, missed))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    match args.child.as_deref() {
        Some("rate-worker") => return Ok(rate_child(&args).await?),
        Some("scheduler") => return Ok(scheduler_child(&args).await?),
        Some(other) => return Err(format!("unknown child mode {other}").into()),
        None => {}
    }
    let url = url(&args);
    let began = Instant::now();
    let tasks = session_tasks(args.tasks, args.sessions);
    let (mut ours, mut base, mut bad, mut base_bad) = (Vec::new(), Vec::new(), 0, 0);
    for run in 0..args.runs {
        // Alternate which goes first so drift hits both alike.
        let order = if run % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for ordered in order {
            let (tps, v) = run_sessions(&url, &tasks, ordered, args.concurrency).await?;
            println!(
                "run {run}: {} {tps:.0} tasks/s, {v} session violations",
                if ordered { "ordered  " } else { "unordered" }
            );
            if ordered {
                ours.push(tps);
                bad += v;
            } else {
                base.push(tps);
                base_bad += v;
            }
        }
    }
    let overshoot = rate_part(&args, &url).await?;
    let (dups, missed) = schedule_part(&args, &url).await?;
    let (o, b) = (median(ours), median(base));
    println!("total {:.1} s", began.elapsed().as_secs_f64());
    println!("RESULT ordered_session_violations ours={bad} baseline=unordered:{base_bad}");
    println!(
        "RESULT ordered_tasks_per_s ours={o:.0} baseline=unordered:{b:.0} ratio={:.2}",
        o / b
    );
    println!("RESULT rate_limit_overshoot_pct ours={overshoot:.2}");
    println!("RESULT schedule_duplicate_ticks ours={dups}");
    println!("RESULT schedule_missed_ticks ours={missed}");
    Ok(())
}
