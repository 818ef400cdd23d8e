//! Benchmark: fan-out / fan-in on Redis with worker processes SIGKILLed and
//! restarted during the run, against the same number of plain tasks through
//! the same queue with the same kills.
//!
//! ```text
//! cargo run --release --example bench_orchestration -- --redis redis://127.0.0.1:6379
//! ```
//!
//! * ours: `--fanouts` coordinators (default 1000) each fan out `--children`
//!   (default 10) echo children with `JoinPolicy::All`; a continuation per
//!   join reads the join and records the coordinator's result. Rate =
//!   children / time until every coordinator's result is recorded and every
//!   queue is empty.
//! * baseline `plain_tasks`: fanouts × children echo tasks on one queue, no
//!   orchestration; time until the queue is empty.
//!
//! Both run in `--workers` worker processes (this binary with `--worker`),
//! one of which is SIGKILLed and restarted at 20 %, 50 % and 80 % progress.
//! Leases are 2 s, so the killed process's tasks come back after that.
//! `lost` counts coordinators without a completed result carrying every
//! child; `decided_twice` counts joins whose record shows other than one
//! decision, or whose continuation runs saw different decisions (markers
//! written by the continuation itself, in Redis).
#![allow(clippy::print_stdout)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::join::{ChildStatus, JoinPolicy};
use agentscale_core::worker::{Handler, TaskContext, Worker};
use agentscale_core::{
    Error, JoinId, JoinStore, Orchestrator, Output, ResultStore, Task, TaskId, TaskOutcome, TaskQueue,
};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_state::redis::{RedisJoinStore, RedisResultStore, RedisStateConfig};
use clap::Parser;
use redis::AsyncCommands;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Redis URL.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis: String,
    /// Fan-outs per run.
    #[arg(long, default_value_t = 1000)]
    fanouts: usize,
    /// Children per fan-out.
    #[arg(long, default_value_t = 10)]
    children: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Runs of each side (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Internal: run as a worker process.
    #[arg(long)]
    worker: bool,
    /// Internal: `plain` or `orch`.
    #[arg(long, default_value = "plain")]
    mode: String,
    /// Internal: the run's namespace.
    #[arg(long, default_value = "")]
    ns: String,
}

const LEASE: Duration = Duration::from_secs(2);

async fn queue(url: &str, name: &str) -> agentscale_core::Result<RedisQueue> {
    RedisQueue::connect(
        RedisQueueConfig::new(url, name)
            .with_key_prefix("asbench")
            .with_lease_timeout(LEASE),
    )
    .await
}

fn state(url: &str, ns: &str) -> RedisStateConfig {
    RedisStateConfig::new(url).with_key_prefix(format!("asbench-{ns}"))
}

struct Bench {
    orch: Option<Arc<Orchestrator>>,
    spec: String,
    main: String,
    children: usize,
    markers: redis::aio::MultiplexedConnection,
    ns: String,
}

#[async_trait::async_trait]
impl Handler for Bench {
    async fn handle(&self, task: &Task, _cx: &TaskContext) -> Result<Output, Error> {
        match task.kind.as_str() {
            "leaf" => Ok(Output::bytes(task.payload.clone())),
            "plan" => {
                let orch = self
                    .orch
                    .as_ref()
                    .ok_or_else(|| Error::invalid_input("no orchestrator"))?;
                let mut f = orch.fan_out(task, JoinPolicy::All);
                for i in 0..self.children {
                    f = f.child(
                        format!("c{i}"),
                        self.spec.clone(),
                        Task::new("leaf", format!("{i}")),
                    );
                }
                Ok(f.then(self.main.clone(), Task::new("gather", ""))
                    .submit()
                    .await?
                    .into_output())
            }
            "gather" => {
                let orch = self
                    .orch
                    .as_ref()
                    .ok_or_else(|| Error::invalid_input("no orchestrator"))?;
                let join = orch.join_of(task).await?;
                let ok = join
                    .children
                    .iter()
                    .filter(|c| matches!(c.status, ChildStatus::Ok(_)))
                    .count();
                // The continuation's own marker: the decision it saw. A second
                // run that saw another decision means the join was decided twice.
                let seen = format!("{:?}:{ok}", join.decision);
                let mut c = self.markers.clone();
                let key = format!("asbench-{}:seen", self.ns);
                let first: bool = c
                    .hset_nx(&key, join.id.as_str(), &seen)
                    .await
                    .map_err(|e| Error::handler(format!("marker: {e}")))?;
                if !first {
                    let before: String = c
                        .hget(&key, join.id.as_str())
                        .await
                        .map_err(|e| Error::handler(format!("marker: {e}")))?;
                    if before != seen {
                        let _: i64 = c
                            .sadd(format!("asbench-{}:twice", self.ns), join.id.as_str())
                            .await
                            .map_err(|e| Error::handler(format!("marker: {e}")))?;
                    }
                }
                Output::json(&ok)
            }
            other => Err(Error::invalid_input(format!("unknown kind {other}"))),
        }
    }
}

async fn run_worker(args: Args) -> agentscale_core::Result<()> {
    let url = args.redis.clone();
    let markers = redis::Client::open(url.as_str())
        .map_err(|e| Error::InvalidConfig(e.to_string()))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| Error::unavailable("markers", e))?;
    let never = futures::future::pending::<()>;
    if args.mode == "plain" {
        let q: Arc<dyn TaskQueue> = Arc::new(queue(&url, &format!("{}-plain", args.ns)).await?);
        let h = Bench {
            orch: None,
            spec: String::new(),
            main: String::new(),
            children: 0,
            markers,
            ns: args.ns,
        };
        Worker::builder(q, h)
            .concurrency(64)
            .build()?
            .run_until(never())
            .await?;
        return Ok(());
    }
    let main: Arc<dyn TaskQueue> = Arc::new(queue(&url, &format!("{}-main", args.ns)).await?);
    let spec: Arc<dyn TaskQueue> = Arc::new(queue(&url, &format!("{}-spec", args.ns)).await?);
    let results = Arc::new(RedisResultStore::builder(state(&url, &args.ns)).connect().await?);
    let joins = Arc::new(RedisJoinStore::builder(state(&url, &args.ns)).connect().await?);
    let orch = Arc::new(
        Orchestrator::builder(results, joins)
            .queue(main.clone())
            .queue(spec.clone())
            .build()?,
    );
    let h = Arc::new(Bench {
        orch: Some(orch.clone()),
        spec: spec.name().to_owned(),
        main: main.name().to_owned(),
        children: args.children,
        markers,
        ns: args.ns.clone(),
    });
    let a = Worker::builder(main, h.clone())
        .concurrency(32)
        .orchestrator(orch.clone())
        .build()?;
    let b = Worker::builder(spec, h)
        .concurrency(64)
        .orchestrator(orch)
        .build()?;
    let (ra, rb) = tokio::join!(a.run_until(never()), b.run_until(never()));
    ra?;
    rb?;
    Ok(())
}

fn spawn_worker(args: &Args, mode: &str, ns: &str) -> Child {
    let exe = std::env::current_exe().expect("own executable");
    Command::new(exe)
        .args(["--worker", "--mode", mode, "--ns", ns, "--redis", &args.redis])
        .args(["--children", &args.children.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn worker process")
}

/// Runs `workers` processes until `done` (polled) says finished, killing one
/// with SIGKILL and restarting it at 20/50/80 % of `progress`.
async fn drive<P, D, PF, DF>(
    args: &Args,
    mode: &str,
    ns: &str,
    mut progress: P,
    mut done: D,
) -> (Duration, usize)
where
    P: FnMut() -> PF,
    PF: std::future::Future<Output = f64>,
    D: FnMut() -> DF,
    DF: std::future::Future<Output = bool>,
{
    let mut procs: Vec<Child> = (0..args.workers).map(|_| spawn_worker(args, mode, ns)).collect();
    let start = Instant::now();
    let mut kills = 0usize;
    let marks = [0.2, 0.5, 0.8];
    loop {
        if done().await {
            break;
        }
        if kills < marks.len() && progress().await >= marks[kills] {
            let i = kills % procs.len();
            let _ = procs[i].kill(); // SIGKILL
            let _ = procs[i].wait();
            procs[i] = spawn_worker(args, mode, ns);
            kills += 1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    for mut p in procs {
        let _ = p.kill();
        let _ = p.wait();
    }
    (elapsed, kills)
}

async fn backlog(q: &RedisQueue) -> u64 {
    q.depth()
        .await
        .map(|d| d.backlog() + d.delayed)
        .unwrap_or(u64::MAX)
}

async fn plain_run(args: &Args) -> agentscale_core::Result<f64> {
    let ns = format!("p{}", uuid_like());
    let q = queue(&args.redis, &format!("{ns}-plain")).await?;
    let n = args.fanouts * args.children;
    let tasks: Vec<Task> = (0..n).map(|i| Task::new("leaf", format!("{i}"))).collect();
    for chunk in tasks.chunks(1000) {
        for r in q.enqueue_batch(chunk.to_vec()).await {
            r?;
        }
    }
    let (elapsed, kills) = drive(
        args,
        "plain",
        &ns,
        || async { 1.0 - backlog(&q).await as f64 / n as f64 },
        || async { backlog(&q).await == 0 },
    )
    .await;
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "plain_tasks  {n:>6} tasks  {:>7.2} s  {rate:>8.0}/s  kills={kills}",
        elapsed.as_secs_f64()
    );
    q.destroy().await?;
    Ok(rate)
}

struct OrchRun {
    children_per_s: f64,
    lost: usize,
    decided_twice: usize,
}

async fn orch_run(args: &Args) -> agentscale_core::Result<OrchRun> {
    let ns = format!("o{}", uuid_like());
    let main = queue(&args.redis, &format!("{ns}-main")).await?;
    let spec = queue(&args.redis, &format!("{ns}-spec")).await?;
    let results = RedisResultStore::builder(state(&args.redis, &ns))
        .connect()
        .await?;
    let joins = RedisJoinStore::builder(state(&args.redis, &ns)).connect().await?;
    let plans: Vec<Task> = (0..args.fanouts)
        .map(|i| Task::new("plan", format!("{i}")))
        .collect();
    let ids: Vec<TaskId> = plans.iter().map(|t| t.id.clone()).collect();
    for chunk in plans.chunks(1000) {
        for r in main.enqueue_batch(chunk.to_vec()).await {
            r?;
        }
    }
    let mut conn = redis::Client::open(args.redis.as_str())
        .map_err(|e| Error::InvalidConfig(e.to_string()))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| Error::unavailable("bench", e))?;
    let seen_key = format!("asbench-{ns}:seen");
    let fanouts = args.fanouts as f64;
    let (elapsed, kills) = {
        let (c1, c2) = (conn.clone(), conn.clone());
        let (k1, k2) = (seen_key.clone(), seen_key.clone());
        let (main, spec) = (&main, &spec);
        drive(
            args,
            "orch",
            &ns,
            move || {
                let (mut c, k) = (c1.clone(), k1.clone());
                async move { c.hlen::<_, u64>(&k).await.unwrap_or(0) as f64 / fanouts }
            },
            move || {
                let (mut c, k) = (c2.clone(), k2.clone());
                async move {
                    c.hlen::<_, u64>(&k).await.unwrap_or(0) as f64 >= fanouts
                        && backlog(main).await == 0
                        && backlog(spec).await == 0
                }
            },
        )
        .await
    };
    // Verification, from the stores and the continuations' markers.
    let mut lost = 0;
    for id in &ids {
        match results.get(id).await? {
            Some(r) => match r.outcome {
                TaskOutcome::Completed(o) if o.parse_json::<usize>().ok() == Some(args.children) => {}
                _ => lost += 1,
            },
            None => lost += 1,
        }
    }
    let mut decided_twice: usize = conn.scard(format!("asbench-{ns}:twice")).await.unwrap_or(0);
    for id in &ids {
        let join = JoinId::new(format!("{id}.join"));
        match joins.state(&join).await? {
            Some(s) if s.decisions == 1 => {}
            Some(_) => decided_twice += 1,
            None => lost += 1,
        }
    }
    let n = args.fanouts * args.children;
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "orchestration {n:>6} children {:>7.2} s  {rate:>8.0}/s  kills={kills} lost={lost} decided_twice={decided_twice}",
        elapsed.as_secs_f64()
    );
    main.destroy().await?;
    spec.destroy().await?;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("asbench-{ns}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| Error::unavailable("scan", e))?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    for chunk in keys.chunks(500) {
        let _: redis::RedisResult<()> = conn.del(chunk).await;
    }
    Ok(OrchRun {
        children_per_s: rate,
        lost,
        decided_twice,
    })
}

fn uuid_like() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs.get(xs.len() / 2).copied().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> agentscale_core::Result<()> {
    let args = Args::parse();
    if args.worker {
        tracing_subscriber::fmt()
            .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()))
            .init();
        return run_worker(args).await;
    }
    println!(
        "# bench_orchestration: {} fan-outs x {} children on Redis, {} worker processes, SIGKILL + restart at 20/50/80 %, {} runs per side",
        args.fanouts, args.children, args.workers, args.runs
    );
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let (mut lost, mut twice) = (0, 0);
    for _ in 0..args.runs {
        base.push(plain_run(&args).await?);
        let r = orch_run(&args).await?;
        ours.push(r.children_per_s);
        lost += r.lost;
        twice += r.decided_twice;
    }
    let (o, b) = (median(ours), median(base));
    let ratio = if b > 0.0 { o / b } else { 0.0 };
    println!("RESULT orchestration_children_per_s ours={o:.0} baseline=plain_tasks:{b:.0} ratio={ratio:.3}");
    println!("RESULT orchestration_lost ours={lost}");
    println!("RESULT orchestration_joins_decided_twice ours={twice}");
    Ok(())
}
