//! `--backend redis-cluster`: one RedisQueue on Redis Cluster with 3 shards
//! (`RedisQueueConfig::shards`) against the same queue with 1 shard, on the
//! same cluster in the same run.
//!
//! Per round and per shard count: enqueue N no-op tasks in batches, then
//! drain them with the worker runtime (leases, fencing and batched acks on)
//! and time the drain. The queue is wrapped so every lease is counted by the
//! shard that issued it (the receipt names it). Around each drain it reads
//! `INFO cpu` of every cluster node and `/proc/self/stat` of this process,
//! so the table shows where the CPU went. Reads `AGENTSCALE_REDIS_CLUSTER_URLS`
//! (`AGENTSCALE_SERVICES=rediscluster scripts/dev-services up`). Deletes
//! every key it made.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale_core::{DeadLetter, Depth, Enqueued, Error, Lease, Nack, Result, Task, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale_redis::{key_slot, Redis, RedisConfig};

use crate::common::{enqueue_all, median, noop_tasks, rate, result_line, run_worker_until_drained};
use crate::Args;

/// Tasks per round when `--tasks` is left at its default.
const DEFAULT_TASKS: usize = 20_000;
/// The sharded configuration measured against one shard.
const SHARDS: usize = 3;

/// A queue that counts leases by the shard that issued them.
#[derive(Debug)]
struct Counted {
    queue: RedisQueue,
    per_shard: Vec<AtomicU64>,
}

impl Counted {
    fn counts(&self) -> Vec<u64> {
        self.per_shard.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

#[async_trait::async_trait]
impl TaskQueue for Counted {
    fn name(&self) -> &str {
        self.queue.name()
    }
    fn capabilities(&self) -> agentscale_core::Capabilities {
        self.queue.capabilities()
    }
    async fn enqueue(&self, task: Task) -> Result<Enqueued> {
        self.queue.enqueue(task).await
    }
    async fn enqueue_batch(&self, tasks: Vec<Task>) -> Vec<Result<Enqueued>> {
        self.queue.enqueue_batch(tasks).await
    }
    async fn lease(&self, max: usize, wait: Duration) -> Result<Vec<Lease>> {
        let leases = self.queue.lease(max, wait).await?;
        for l in &leases {
            // `<shard>:<prio>:<entry>` on a sharded queue, `<prio>:<entry>` on one shard.
            let shard = match l.receipt().matches(':').count() {
                2 => l
                    .receipt()
                    .split(':')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                _ => 0usize,
            };
            if let Some(c) = self.per_shard.get(shard) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(leases)
    }
    async fn ack(&self, lease: &Lease) -> Result<()> {
        self.queue.ack(lease).await
    }
    async fn ack_batch(&self, leases: &[Lease]) -> Vec<Result<()>> {
        self.queue.ack_batch(leases).await
    }
    async fn nack(&self, lease: &Lease, nack: Nack) -> Result<()> {
        self.queue.nack(lease, nack).await
    }
    async fn extend(&self, lease: &Lease, by: Duration) -> Result<()> {
        self.queue.extend(lease, by).await
    }
    async fn depth(&self) -> Result<Depth> {
        self.queue.depth().await
    }
    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>> {
        self.queue.dead_letters(max).await
    }
}

/// CPU seconds used so far: this process, then each cluster node (by URL).
struct Cpu {
    bench: f64,
    nodes: Vec<f64>,
}

/// User + system CPU seconds of this process.
fn own_cpu() -> f64 {
    crate::proc_cpu::cpu_seconds("self").map_or(0.0, |(u, s)| u + s)
}

async fn node_cpu(url: &str) -> Result<f64> {
    let client = ::redis::Client::open(url).map_err(|e| Error::backend("redis url", e))?;
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| Error::backend("connect to a cluster node", e))?;
    let info: String = ::redis::cmd("INFO")
        .arg("cpu")
        .query_async(&mut c)
        .await
        .map_err(|e| Error::backend("INFO cpu", e))?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    Ok(field("used_cpu_user:") + field("used_cpu_sys:"))
}

async fn cpu_now(nodes: &[String]) -> Result<Cpu> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        out.push(node_cpu(n).await?);
    }
    Ok(Cpu {
        bench: own_cpu(),
        nodes: out,
    })
}

/// One drain: consume rate, leases per shard, CPU seconds (bench, per node).
struct Drain {
    consume: f64,
    per_shard: Vec<u64>,
    cpu_bench: f64,
    cpu_nodes: Vec<f64>,
}

/// The role (`master`/`slave`) of each node, by `INFO replication`.
async fn roles(nodes: &[String]) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for url in nodes {
        let client = ::redis::Client::open(url.as_str()).map_err(|e| Error::backend("redis url", e))?;
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| Error::backend("connect to a cluster node", e))?;
        let info: String = ::redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut c)
            .await
            .map_err(|e| Error::backend("INFO replication", e))?;
        let role = info
            .lines()
            .find_map(|l| l.strip_prefix("role:"))
            .unwrap_or("?")
            .trim()
            .to_string();
        out.push(role);
    }
    Ok(out)
}

/// Runs the cluster benchmark and prints its tables and RESULT lines.
pub async fn run(args: &Args) -> Result<()> {
    let urls = std::env::var("AGENTSCALE_REDIS_CLUSTER_URLS").map_err(|_| {
        Error::InvalidConfig(
            "AGENTSCALE_REDIS_CLUSTER_URLS is not set; run: eval \"$(AGENTSCALE_SERVICES=rediscluster scripts/dev-services up)\"".into(),
        )
    })?;
    let nodes: Vec<String> = urls
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let n = if args.tasks == 200_000 {
        DEFAULT_TASKS
    } else {
        args.tasks
    };
    let redis = Redis::connect(RedisConfig::builder().cluster_nodes(nodes.clone()).build()?).await?;
    let roles = roles(&nodes).await?;
    println!(
        "# bench_queue --backend redis-cluster: {n} no-op tasks, enqueue batches of {}, worker concurrency {}, {} nodes ({} masters)",
        args.enqueue_batch,
        args.concurrency,
        nodes.len(),
        roles.iter().filter(|r| *r == "master").count()
    );
    let probe = RedisQueue::new(
        redis.clone(),
        RedisQueueConfig::new("redis://unused", "bench-probe").with_shards(SHARDS),
    )
    .await?;
    for (i, k) in probe.shard_keys().iter().enumerate() {
        println!("# shard {i}: {} (slot {})", k.dead, key_slot(k.dead.as_bytes()));
    }
    probe.destroy().await?;
    println!("| round | shards | consume (tasks/s) | leases per shard | bench CPU s | master CPU s (each) | replica CPU s (sum) |");
    println!("|---|---|---|---|---|---|---|");
    let (mut one, mut three) = (Vec::new(), Vec::new());
    let mut shares = [0u64; SHARDS];
    for round in 1..=args.rounds {
        for shards in [1, SHARDS] {
            let d = drain_once(&redis, &nodes, shards, n, args).await?;
            let masters: Vec<String> = d
                .cpu_nodes
                .iter()
                .zip(&roles)
                .filter(|(_, r)| *r == "master")
                .map(|(c, _)| format!("{c:.2}"))
                .collect();
            let replicas: f64 = d
                .cpu_nodes
                .iter()
                .zip(&roles)
                .filter(|(_, r)| *r != "master")
                .map(|(c, _)| c)
                .sum();
            println!(
                "| {round} | {shards} | {:.0} | {:?} | {:.2} | {} | {replicas:.2} |",
                d.consume,
                d.per_shard,
                d.cpu_bench,
                masters.join(" / ")
            );
            if shards == 1 {
                one.push(d.consume);
            } else {
                three.push(d.consume);
                for (s, c) in shares.iter_mut().zip(&d.per_shard) {
                    *s += c;
                }
            }
        }
    }
    let (o, t) = (median(one), median(three));
    println!("| median | 1 | {o:.0} | | | | |");
    println!("| median | {SHARDS} | {t:.0} | | | | |");
    result_line("redis_cluster_consume_tasks_per_s", t, "one_shard", o);
    let mean = shares.iter().sum::<u64>() as f64 / SHARDS as f64;
    for (i, s) in shares.iter().enumerate() {
        result_line(&format!("redis_cluster_shard_share_{i}"), *s as f64, "mean", mean);
    }
    Ok(())
}

async fn drain_once(redis: &Redis, nodes: &[String], shards: usize, n: usize, args: &Args) -> Result<Drain> {
    let name = format!("bench-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let config = RedisQueueConfig::new("redis://unused", name)
        .with_key_prefix("agentscale-bench")
        .with_shards(shards);
    let queue = RedisQueue::new(redis.clone(), config).await?;
    let outcome = async {
        enqueue_all(&queue, noop_tasks(n), args.enqueue_batch).await?;
        let depth = queue.depth().await?;
        if depth.ready != n as u64 {
            return Err(Error::Handler(format!("enqueued {n} but depth says {depth:?}")));
        }
        let counted = Arc::new(Counted {
            queue: queue.clone(),
            per_shard: (0..shards).map(|_| AtomicU64::new(0)).collect(),
        });
        let before = cpu_now(nodes).await?;
        let started = Instant::now();
        let (elapsed, report) = run_worker_until_drained(counted.clone(), n as u64, args.concurrency).await?;
        let wall = started.elapsed();
        let after = cpu_now(nodes).await?;
        let depth = queue.depth().await?;
        if report.completed != n as u64 || depth.backlog() != 0 || depth.dead != 0 {
            return Err(Error::Handler(format!(
                "redis cluster run incomplete: report {report:?}, depth {depth:?}"
            )));
        }
        tracing::debug!(?wall, "drained");
        Ok(Drain {
            consume: rate(n as u64, elapsed),
            per_shard: counted.counts(),
            cpu_bench: after.bench - before.bench,
            cpu_nodes: after
                .nodes
                .iter()
                .zip(&before.nodes)
                .map(|(a, b)| a - b)
                .collect(),
        })
    }
    .await;
    queue.destroy().await?;
    outcome
}
