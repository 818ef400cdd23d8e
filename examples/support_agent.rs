//! A customer-support agent service on Redis (`AGENTSCALE_REDIS_URL`): 2,000 tasks for 40
//! customers, two workers on one shared connection, handlers by kind with typed payloads,
//! accounts in sessions (applied at most once per task, even when a retry re-runs a handler),
//! a cached CRM lookup; then an exact check of every count, the queue and the dead letters
//! (exit 1 on any mismatch). `cargo run -p agentscale-examples --features redis --example support_agent`
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentscale::queue::redis::{RedisQueue, RedisQueueConfig};
use agentscale::redis::{Redis, RedisConfig};
use agentscale::state::redis::{RedisSessionStore, RedisStateConfig, RedisToolCache};
use agentscale::worker::Backoff;
use agentscale::{json, Error, KindRouter, Output, SessionKey, SessionStore, SessionStoreExt, Task};
use agentscale::{TaskContext, TaskId, TaskQueue, ToolCacheExt, ToolKey, Worker};
use serde::{Deserialize, Serialize};

/// A customer's account, kept in their session.
#[derive(Serialize, Deserialize, Default, PartialEq, Debug, Clone, Copy)]
struct Account {
    messages: u64,
    refunded_cents: u64,
}

/// What every handler shares (cheap clones).
#[derive(Clone)]
struct App {
    sessions: Arc<RedisSessionStore>,
    tools: Arc<RedisToolCache>,
}

impl App {
    /// Adds `(messages, cents)` to the task's customer account at most once; every
    /// 50th task's first attempt then "crashes" after the write, and its retry must
    /// not count it twice.
    async fn apply(&self, task: &Task, cx: &TaskContext, n: usize, add: (u64, u64)) -> Result<Output, Error> {
        let key = SessionKey::for_task(task)?;
        let crm = ToolKey::new("acme", "crm", "v1", &json!({ "customer": key.session() }))?;
        let tier = async { Ok("gold".to_string()) }; // a real service calls its CRM here
        let tier = self
            .tools
            .get_or_compute_json(&crm, Duration::from_secs(300), None, tier);
        let tier = tier.await?.value;
        let update = |a: Option<Account>| {
            let a = a.unwrap_or_default();
            Ok(Account {
                messages: a.messages + add.0,
                refunded_cents: a.refunded_cents + add.1,
            })
        };
        self.sessions.apply_once(&key, &task.id, update).await?;
        if n.is_multiple_of(50) && cx.attempt() == 1 {
            return Err(Error::handler("crashed after the session write"));
        }
        Output::json(&tier)
    }
}

/// The whole service and its check: the mismatches found (none when exact).
pub async fn run(url: &str, customers: usize, tasks: usize) -> Result<Vec<String>, Error> {
    let redis = Redis::connect(RedisConfig::builder().url(url).build()?).await?;
    let prefix = format!("support-{}", TaskId::generate());
    let queue_cfg = RedisQueueConfig::new(url, "support").with_key_prefix(&prefix);
    let state_cfg = RedisStateConfig::new(url).with_key_prefix(&prefix);
    let app = App {
        sessions: Arc::new(RedisSessionStore::new(redis.clone(), state_cfg.clone()).await?),
        tools: Arc::new(RedisToolCache::new(redis.clone(), state_cfg).await?),
    };
    let queue = RedisQueue::new(redis.clone(), queue_cfg.clone().with_consumer_name("producer")).await?;

    // Producer: three messages to one refund, round-robin over the customers.
    let mut expected = vec![Account::default(); customers];
    let mut batch = Vec::with_capacity(tasks);
    for n in 0..tasks {
        let c = n % customers;
        let task = if n % 4 == 3 {
            expected[c].refunded_cents += n as u64;
            Task::json("refund", &(n, n as u64))?
        } else {
            expected[c].messages += 1;
            Task::json("message", &(n, format!("help #{n}")))?
        };
        batch.push(task.with_tenant("acme").with_session(format!("customer-{c}")));
    }
    for r in queue.enqueue_batch(batch).await {
        r?;
    }

    // Two workers, each its own consumer on the shared connection.
    let router = Arc::new(
        KindRouter::new(app.clone())
            .on::<(usize, String), _, _>("message", |app, (n, _), t, cx| async move {
                app.apply(&t, &cx, n, (1, 0)).await
            })
            .on::<(usize, u64), _, _>("refund", |app, (n, cents), t, cx| async move {
                app.apply(&t, &cx, n, (0, cents)).await
            }),
    );
    let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
    let (mut stats, mut running) = (Vec::new(), Vec::new());
    for name in ["worker-a", "worker-b"] {
        let q = RedisQueue::new(redis.clone(), queue_cfg.clone().with_consumer_name(name)).await?;
        let backoff = Backoff::fixed(Duration::from_millis(20));
        let worker = Worker::builder(Arc::new(q), router.clone())
            .backoff(backoff)
            .build()?;
        stats.push(worker.stats());
        let mut rx = stop.subscribe();
        running.push(tokio::spawn(worker.run_until(async move {
            let _ = rx.recv().await;
        })));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while stats.iter().map(|s| s.snapshot().completed).sum::<u64>() < tasks as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    for r in running {
        r.await.map_err(|e| Error::handler(e.to_string()))??;
    }

    // Verification: exact counts, an empty queue, no dead letters.
    let mut mismatches = Vec::new();
    for (c, want) in expected.iter().enumerate() {
        let key = SessionKey::new("acme", format!("customer-{c}"))?;
        let got = app.sessions.get_applied::<Account>(&key).await?.map(|(a, _)| a);
        if got != Some(*want) {
            mismatches.push(format!("customer-{c}: want {want:?}, got {got:?}"));
        }
        app.sessions.delete(&key).await?;
    }
    let depth = queue.depth().await?;
    if depth.due() + depth.delayed + depth.dead > 0 {
        mismatches.push(format!("queue not empty: {depth:?}"));
    }
    for d in queue.dead_letters(10).await? {
        mismatches.push(format!("dead letter: {}", d.reason));
    }
    queue.destroy().await?;
    Ok(mismatches)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::var("AGENTSCALE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mismatches = run(&url, 40, 2000).await?;
    for m in &mismatches {
        println!("MISMATCH {m}");
    }
    println!(
        "support_agent: 2000 tasks, 40 customers, mismatches={}",
        mismatches.len()
    );
    std::process::exit(i32::from(!mismatches.is_empty()))
}
