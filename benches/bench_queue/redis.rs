//! `--backend redis`: RedisQueue + Worker on a real Redis, against
//! `redis-benchmark`'s pipelined XADD on the same server in the same run.
//!
//! Per round: enqueue N no-op tasks in batches (`enqueue_batch`, pipelined),
//! then drain them with the worker runtime (leases, fencing, batched acks on),
//! and run `redis-benchmark -q --csv -n 200000 -c 50 -P 16 XADD <key> * f v`
//! as the physical anchor. Reads `AGENTSCALE_REDIS_URL` (default
//! `redis://127.0.0.1:6379`). Deletes every key it made.

use std::sync::Arc;
use std::time::Instant;

use agentscale_core::{Error, Result, TaskQueue};
use agentscale_queue::redis::{RedisQueue, RedisQueueConfig};

use crate::common::{enqueue_all, median, noop_tasks, rate, result_line, run_worker_until_drained};
use crate::Args;

/// Tasks per round when `--tasks` is left at its default.
const DEFAULT_TASKS: usize = 50_000;

/// Runs the Redis benchmark and prints its table and RESULT lines.
pub async fn run(args: &Args) -> Result<()> {
    let url = std::env::var("AGENTSCALE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let n = if args.tasks == 200_000 {
        DEFAULT_TASKS
    } else {
        args.tasks
    };
    println!(
        "# bench_queue --backend redis: {n} no-op tasks, enqueue batches of {}, worker concurrency {}, {}",
        args.enqueue_batch,
        args.concurrency,
        agentscale_core::config::redact_url(&url)
    );
    println!("| round | enqueue (tasks/s) | consume (tasks/s) | XADD -P 16 anchor (ops/s) | enqueue ratio | consume ratio |");
    println!("|---|---|---|---|---|---|");
    let (mut enq, mut con, mut anchor) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let a = xadd_anchor(&url).await?;
        let (e, c) = ours_once(&url, n, args).await?;
        println!(
            "| {round} | {e:.0} | {c:.0} | {a:.0} | {:.3} | {:.3} |",
            e / a,
            c / a
        );
        enq.push(e);
        con.push(c);
        anchor.push(a);
    }
    let (e, c, a) = (median(enq), median(con), median(anchor));
    println!(
        "| median | {e:.0} | {c:.0} | {a:.0} | {:.3} | {:.3} |",
        e / a,
        c / a
    );
    result_line("redis_enqueue_tasks_per_s", e, "xadd_p16_ops_per_s", a);
    result_line("redis_consume_tasks_per_s", c, "xadd_p16_ops_per_s", a);
    Ok(())
}

async fn ours_once(url: &str, n: usize, args: &Args) -> Result<(f64, f64)> {
    let name = format!("bench-{}-{:08x}", std::process::id(), rand::random::<u32>());
    let config = RedisQueueConfig::new(url, name).with_key_prefix("agentscale-bench");
    let queue = RedisQueue::connect(config).await?;
    let outcome = async {
        let tasks = noop_tasks(n);
        let started = Instant::now();
        enqueue_all(&queue, tasks, args.enqueue_batch).await?;
        let enqueue = rate(n as u64, started.elapsed());
        let depth = queue.depth().await?;
        if depth.ready != n as u64 {
            return Err(Error::Handler(format!("enqueued {n} but depth says {depth:?}")));
        }
        let shared: Arc<dyn TaskQueue> = Arc::new(queue.clone());
        let (elapsed, report) = run_worker_until_drained(shared, n as u64, args.concurrency).await?;
        let depth = queue.depth().await?;
        if report.completed != n as u64 || depth.backlog() != 0 || depth.dead != 0 {
            return Err(Error::Handler(format!(
                "redis run incomplete: report {report:?}, depth {depth:?}"
            )));
        }
        Ok((enqueue, rate(n as u64, elapsed)))
    }
    .await;
    queue.destroy().await?;
    outcome
}

/// `redis-benchmark -q --csv -n 200000 -c 50 -P 16 XADD <key> * f v`; returns
/// its requests per second.
async fn xadd_anchor(url: &str) -> Result<f64> {
    let (host, port) = host_port(url);
    let key = format!("agentscale-bench:{{anchor-{}}}:xadd", std::process::id());
    let mut cmd = tokio::process::Command::new("redis-benchmark");
    cmd.args([
        "-h",
        &host,
        "-p",
        &port.to_string(),
        "-q",
        "--csv",
        "-n",
        "200000",
        "-c",
        "50",
        "-P",
        "16",
    ])
    .args(["XADD", &key, "*", "f", "v"]);
    if let Some(pw) = password(url) {
        cmd.args(["-a", &pw]);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| Error::backend("running redis-benchmark (is it installed?)", e))?;
    let cleanup = async {
        let client = ::redis::Client::open(url).map_err(|e| Error::backend("redis url", e))?;
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| Error::backend("connect", e))?;
        let _: i64 = ::redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut c)
            .await
            .map_err(|e| Error::backend("DEL", e))?;
        Ok::<_, Error>(())
    };
    cleanup.await?;
    if !out.status.success() {
        return Err(Error::Handler(format!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_rps(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
        Error::Handler(format!(
            "cannot parse redis-benchmark output: {}",
            String::from_utf8_lossy(&out.stdout)
        ))
    })
}

/// The `rps` column of redis-benchmark's CSV (first data row).
fn parse_rps(csv: &str) -> Option<f64> {
    let mut lines = csv.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<String> = lines
        .next()?
        .split(',')
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    let col = header.iter().position(|h| h == "rps")?;
    let row: Vec<String> = lines
        .next()?
        .split("\",\"")
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    row.get(col)?.parse().ok()
}

fn host_port(url: &str) -> (String, u16) {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let rest = rest.split('/').next().unwrap_or(rest);
    let rest = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    match rest.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(6379)),
        None => (rest.to_string(), 6379),
    }
}

fn password(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let auth = rest.split('/').next()?.rsplit_once('@')?.0;
    auth.split_once(':')
        .map(|(_, p)| p.to_string())
        .filter(|p| !p.is_empty())
}
